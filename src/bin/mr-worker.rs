//! `mr-worker`: loads an app plugin and runs tasks from the coordinator
//! ([`mapreduce::worker::run`]) until the job ends; or, pointed at a
//! standing cluster, runs as its long-lived worker ([`mapreduce::agent`])
//! until stopped. Started again by
//! itself with `--task-process`, it is one slot's task process
//! ([`mapreduce::task_host::run`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mapreduce::cli;
use mapreduce::cluster::workers::Label;
use mapreduce::memory_budget::{self, SlotMemory};
use mapreduce::plugin::Plugin;
use mapreduce::task_process::TaskCommand;
use mapreduce::worker::{self, AppSource, WorkerConfig, WorkerExit};

/// Run map and reduce tasks for a MapReduce coordinator (`mr-master`) with
/// the given app plugin. Exits 0 when the job succeeded; 1 if the worker
/// could not start (no coordinator, a bad plugin), 3 if the job failed, 4 if
/// the coordinator vanished before the job ended and did not come back.
///
/// Pointed at a standing cluster (`mr-master --serve`), without APP, it
/// joins the cluster's pool and runs tasks of its jobs until SIGTERM or
/// Ctrl-C, on which it lets its running tasks finish and report, and exits
/// 0; 4 if the cluster vanished and did not come back.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The coordinator's address.
    #[arg(long, value_name = "HOST:PORT", env = "MR_MASTER", default_value = "127.0.0.1:7878")]
    master: String,

    /// File holding the job's shared secret: the same file as the
    /// coordinator's --token-file.
    #[arg(long, value_name = "FILE", env = "MR_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// With --token-file: do not insist on encrypted connections (the
    /// coordinator was started with --no-tls).
    #[arg(long, env = "MR_NO_TLS")]
    no_tls: bool,

    /// Seconds to keep trying to reach the coordinator at start-up.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = cli::parse_positive_secs)]
    connect_timeout: Duration,

    /// Seconds to keep trying to reach the coordinator again when the
    /// connection breaks mid-job: a coordinator restarted on the same
    /// address resumes the job, and the worker goes on with it. 0 gives up
    /// at once (exit status 4).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = cli::parse_secs)]
    reconnect_timeout: Duration,

    /// Tasks to run at once (each slot runs its tasks in a task process of
    /// its own), so that one worker per machine uses every core. Default:
    /// the cores this process may run on.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    slots: Option<u16>,

    /// Memory this worker and its task processes may hold resident, in
    /// bytes (suffixes K, M, G): shared equally among the slots, it bounds
    /// each task's buffers (a map's input and output buffer, a reduce's
    /// fetched runs, a merge's readers), so that tasks spill to disk
    /// earlier rather than grow. Default: half the machine's memory (or of
    /// its container's limit). 0 sets no budget.
    #[arg(long, value_name = "BYTES", env = "MR_WORKER_MEMORY", value_parser = cli::parse_bytes)]
    memory: Option<u64>,

    /// What this worker offers a cluster's jobs, which may require labels
    /// of the workers that run their tasks: KEY (`gpu`) or KEY=VALUE
    /// (`zone=a`); repeat for several. Ignored by a one-job coordinator.
    #[arg(long = "label", value_name = "KEY[=VALUE]")]
    labels: Vec<Label>,

    /// With a cluster: seconds that running tasks may take to finish and
    /// report after SIGTERM or Ctrl-C, before they are cancelled.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = cli::parse_secs)]
    drain_timeout: Duration,

    /// Where to make this worker's work directory (a fresh directory
    /// inside DIR, removed at exit), for map output it serves to reducers
    /// and runs it fetches, when it does not share the job directory.
    /// Default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,

    /// Where this worker serves its map output to reducers on other
    /// machines. Default: a free port on the address this worker reaches
    /// the coordinator from. With a cluster, each job's map output is
    /// served on a port of its own: give HOST:0.
    #[arg(long, value_name = "HOST:PORT")]
    serve_on: Option<String>,

    /// Act as if this machine did not share the coordinator's filesystem,
    /// even if it does: map output is served from the work directory,
    /// inputs this worker cannot read come from the coordinator, reduce
    /// outputs are sent to it (to try a multi-machine set-up on one).
    #[arg(long)]
    no_shared_dir: bool,

    /// Bytes of map output one reduce may fetch into memory from other
    /// workers (suffixes K, M, G; at most a quarter of its slot's share of
    /// --memory); runs past that are fetched into the work directory, and
    /// all are merged from where they are.
    #[arg(long, value_name = "BYTES", default_value = "128M", value_parser = cli::parse_bytes)]
    fetch_memory: u64,

    /// Also append the log to this file.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Run as a slot's task process, for the worker that started this
    /// one (internal: the worker passes it a socket).
    #[arg(long, hide = true)]
    task_process: bool,

    /// The app: a path to a plugin (`.so`), or a bare NAME for `libNAME.so`
    /// in this executable's directory (e.g. `wordcount`). Without it, the
    /// worker runs the app the master names (`mr-master --app`), fetched
    /// from the master. Refused by a cluster, whose jobs name their apps.
    #[arg(value_name = "APP")]
    app: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = mapreduce::logging::init(args.log_file.as_deref()) {
        let path = args.log_file.as_deref().unwrap_or(Path::new("")).display();
        eprintln!("mr-worker: error: cannot open log file {path}: {e}");
        return ExitCode::FAILURE;
    }
    if args.task_process {
        // Its logs name the worker and slot it serves, in spans of its own.
        return match mapreduce::task_host::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mr-worker (task process): error: {}", mapreduce::errors::one_line(&e));
                ExitCode::FAILURE
            }
        };
    }
    let _span = tracing::info_span!("worker", id = %worker::worker_id()).entered();
    let (slots, memory, slot_memory) = match plan_memory(args.slots, args.memory) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("mr-worker: error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args, slots, memory, slot_memory) {
        Ok(WorkerExit::JobDone) => {
            tracing::info!("exiting: the job is done");
            ExitCode::SUCCESS
        }
        Ok(WorkerExit::Drained) => {
            tracing::info!("exiting: stopped by a signal");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mr-worker: error: {}", mapreduce::errors::one_line(e.as_ref()));
            let code = e.downcast_ref::<worker::WorkerError>().map_or(1, worker::WorkerError::exit_code);
            ExitCode::from(code)
        }
    }
}

/// The slots, the memory budget (`None` for none) and each slot's share,
/// from `--slots` and `--memory` as given. Without `--slots`, a worker runs
/// as many slots as it has cores and its budget allows (saying so when
/// the budget allows fewer); with it, a budget too small is an error.
fn plan_memory(slots: Option<u16>, memory: Option<u64>) -> Result<(usize, Option<u64>, SlotMemory), memory_budget::BudgetTooSmall> {
    let budget = match memory {
        Some(0) => None,
        Some(bytes) => Some((bytes, false)),
        None => {
            let default = memory_budget::default_budget();
            if default.is_none() {
                tracing::warn!("cannot read this machine's memory: no memory budget (give --memory to set one)");
            }
            default.map(|bytes| (bytes, true))
        }
    };
    let Some((budget, defaulted)) = budget else { return Ok((slots.map_or_else(cores, usize::from), None, SlotMemory::unbounded())) };
    let slots = match slots {
        Some(slots) => usize::from(slots),
        None => {
            let (cores, allowed) = (cores(), memory_budget::slots_within(budget));
            if allowed < cores {
                tracing::warn!("{} MiB of memory allows {allowed} slots of this machine's {cores} cores", budget >> 20);
            }
            cores.min(allowed).max(1)
        }
    };
    let share = memory_budget::divide(budget, slots).map_err(|e| memory_budget::BudgetTooSmall { defaulted, ..e })?;
    Ok((slots, Some(budget), share))
}

/// The cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[tokio::main]
async fn run(args: Args, slots: usize, memory: Option<u64>, slot_memory: SlotMemory) -> anyhow::Result<WorkerExit> {
    let secret = mapreduce::cli::read_secret(args.token_file.as_deref(), args.no_tls).map_err(anyhow::Error::msg)?;
    // A plugin given here is loaded before connecting: a bad one fails at once.
    let app = match &args.app {
        Some(app) => AppSource::Given(Arc::new(Plugin::open(app)?)),
        None => AppSource::FromJob,
    };
    // A task process logs where this process does.
    let mut task_args: Vec<std::ffi::OsString> = vec!["--task-process".into()];
    if let Some(log_file) = &args.log_file {
        task_args.extend(["--log-file".into(), log_file.clone().into_os_string()]);
    }
    let config = WorkerConfig {
        secret,
        token_file: args.token_file,
        task_command: TaskCommand::this_executable(task_args),
        work_dir: args.work_dir,
        serve_on: args.serve_on,
        use_shared_dir: !args.no_shared_dir,
        fetch_memory: args.fetch_memory.min(slot_memory.fetch_bytes),
        master: args.master,
        connect_timeout: args.connect_timeout,
        reconnect_timeout: args.reconnect_timeout,
        slots,
        memory,
        slot_memory,
        labels: args.labels,
        drain_timeout: args.drain_timeout,
    };
    // Polled only with a cluster: a one-job worker keeps the signals' default action.
    Ok(worker::run(app, config, cli::termination_signal()).await?)
}
