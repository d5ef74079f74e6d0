//! A MapReduce framework: a coordinator that hands out map and reduce tasks
//! over RPC, workers that run app plugins, and a streaming shuffle.
//!
//! App authors need only the app crate, `mapreduce-app`
//! ([`mapreduce_app`], re-exported here): [`App`], [`export_app!`] and, for
//! text, [`text`]; the rest is the framework the binaries in `src/bin/` are
//! wired from.
//!
//! # Layout
//!
//! The host's modules sit in folders by layer: [`control`] (planning,
//! scheduling, RPC, restarts), [`data`] (running attempts, the shuffle,
//! files), [`net`] (connections and their handshake) and [`observe`]
//! (status, progress, HTTP, metrics, summary); the
//! app API is its own crate. Each module is also re-exported at the top,
//! so `mapreduce::scheduler` is `mapreduce::control::scheduler`.
//!
//! | concept | module |
//! |---|---|
//! | the app API an author implements (from `mapreduce-app`) | [`app`] |
//! | counters: built-in and the app's own | [`counters`] |
//! | the versioned C ABI between worker and plugin (from `mapreduce-app`) | [`abi`] |
//! | loading a plugin and calling it safely | [`plugin`] |
//! | word splitting with the lab's semantics (from `mapreduce-app`) | [`text`] |
//! | input arguments → input files | [`inputs`] |
//! | inputs on object storage (`s3://`): listing, ranged reads, retries | [`remote`] |
//! | input files → map tasks (splits), and reading one | [`split`] |
//! | input files mapped into memory, safe if one shrinks | [`mapped_input`] |
//! | a worker's memory budget, divided among its slots; peak resident memory | [`memory_budget`] |
//! | the RPC contract and its messages | [`rpc`] |
//! | scheduling: the task state machine (no I/O) | [`scheduler`] |
//! | when a straggler gets a backup attempt | [`backup`] |
//! | which reports are applied: the attempt's owner, its task's kind | [`report_check`] |
//! | the coordinator process around the scheduler | [`coordinator`] |
//! | the standing cluster: which job a free slot serves (priorities, fair share) | [`cluster::queue`] |
//! | the standing cluster: its workers, their labels and load limits | [`cluster::workers`] |
//! | accepting connections on every listener within one descriptor budget | [`accept`] |
//! | every connection's handshake: who is calling, and the shared secret | [`handshake`] |
//! | serving files (map output, inputs, the app) and fetching them | [`files`] |
//! | a reduce's output sent to the coordinator as it is written | [`upload`] |
//! | the job directory: lock, resume or clean, publishing outputs | [`job_dir`] |
//! | outputs committed to object storage (temporary keys, a `_SUCCESS` manifest) | [`remote_output`] |
//! | files shipped with a job (`--files`): checked, served, fetched by workers | [`shipped`] |
//! | where inputs are stored (local files, object storage), behind one trait | [`input_store`] |
//! | the coordinator's journal of finished tasks, for restarts | [`journal`] |
//! | the job as observers see it (progress, status API, summary) | [`status`] |
//! | live progress in the terminal | [`progress`] |
//! | the HTTP status server and dashboard | [`http`] |
//! | Prometheus metrics | [`metrics`] |
//! | the end-of-job summary | [`summary`] |
//! | the worker process's loop for one job; a cluster's server hands it to the agent | [`worker`] |
//! | what a worker is given and how it ends: config, exits, errors | [`worker_config`] |
//! | a worker's RPC link, made again when it breaks; call deadlines | [`link`] |
//! | the link to one job's coordinator: first connection, heartbeat, task, report | [`job_link`] |
//! | one job's storage on a worker: work directory, file server, task process start | [`job_setup`] |
//! | a worker's slot: its thread, its task process, one task start to report | [`slot`] |
//! | the long-lived worker of a cluster: join, load heartbeats, slots lent per task | [`agent`] |
//! | a long-lived worker's per-job sessions (link, spec, storage, app, heartbeat) | [`session`] |
//! | a long-lived worker's apps, fetched once by SHA-256 | [`app_cache`] |
//! | the machine's load a long-lived worker reports (load average, memory, disk) | [`machine_load`] |
//! | a slot's task process, killed and restarted when an attempt hangs or dies | [`task_process`] |
//! | the task process's side: loading the app once, running attempts | [`task_host`] |
//! | the messages between a worker and its task processes | [`task_protocol`] |
//! | a worker's locked work directory; removing those of dead workers | [`work_dir`] |
//! | running one map or reduce attempt | [`task`] |
//! | partitioning keys among reduces (from `mapreduce-app`) | [`partition`] |
//! | map output: buffer, sorted runs | [`shuffle`] |
//! | where a map's output lives, and reading it back | [`map_output`] |
//! | sorting the map buffer by key prefix (LSD radix) | `radix_sort` |
//! | the intermediate (run) file format | [`runfile`] |
//! | reduce input: k-way merge of runs | [`merge`] |
//! | merges of many runs in passes, a bounded number open at once | [`fan_in`] |
//! | finding and skipping records that crash the app | [`skipping`] |
//! | output files and atomic publication | [`output`] |
//! | the single-process reference run | [`sequential`] |
//! | log setup for the binaries | [`logging`] |
//! | flag parsing and signals for the binaries | [`cli`] |
//! | errors as one line for users | [`errors`] |
//! | a peer's text made safe to log; warnings limited per window | [`untrusted`] |

#![warn(missing_docs)]
// Soundness arguments where they are needed, and no string slicing that a
// peer's text can make panic (see issue 18's review; CI runs clippy with
// these as errors).
#![warn(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, clippy::string_slice)]

pub use mapreduce_app::{abi, app, export_app, partition, text};
pub(crate) use mapreduce_app::{cpu, small_copy};
pub mod control;
pub mod data;
pub mod net;
pub mod observe;

pub use control::{
    agent, app_cache, backup, cluster, coordinator, inputs, job_dir, job_files, job_link, job_setup, journal, link, machine_load, remote_output,
    report_check, rpc, scheduler, session, shipped, slot, task_host, task_process, task_protocol, worker, worker_config,
};
pub(crate) use data::radix_sort;
pub use data::{
    codec, fan_in, input_store, map_output, mapped_input, memory_budget, merge, output, plugin, remote, runfile, sequential, shuffle, skipping,
    split, storage, task, work_dir,
};
pub use net::{accept, files, handshake, route, secure, upload};
pub use observe::{http, metrics, progress, status, summary};
pub mod cli;
pub mod counters;
pub mod errors;
pub mod logging;
#[cfg(test)]
mod test_rng;
pub mod untrusted;

pub use app::{App, AppError, AppResult, Emitter, JobContext, MapInput, OutputFormat, Params, ValueSource, Values, VecValues};
