//! The worker process's loop: ask for a task, run it, report, repeat.
//!
//! [`run`] connects to the coordinator (retrying until the connect timeout,
//! since workers are often started before or alongside the master), then
//! pulls tasks until told to exit, in as many slots (concurrent task loops
//! sharing one connection) as configured. Each slot runs its attempts in a
//! task process of its own ([`crate::task_process`]), which loads the app
//! once and keeps what a task leaves for the next (its input buffer, the
//! table behind `Emitter::count`, tens of MiB for a large vocabulary); an
//! attempt given up, or one that hangs or crashes, costs that process, never
//! the slot or the worker. The slot's own thread starts and watches it, off
//! the RPC runtime. Beside the slots, a heartbeat loop tells the coordinator
//! every [`JobSpec::heartbeat_interval`](crate::rpc::JobSpec) that this
//! process is alive and how far each running attempt has got.
//!
//! A coordinator that goes away mid-job may be restarted (it resumes the
//! job from its journal), so a broken connection is not the end: the loops
//! share one [`JobLink`](crate::job_link::JobLink), and the first loop whose
//! call fails reconnects for up to [`WorkerConfig::reconnect_timeout`],
//! checking that the coordinator it finds runs the same job (its id), while
//! the others wait for it. Attempts keep running meanwhile; their reports
//! go to the new coordinator, which takes a completion from before its
//! restart.
//!
//! A server that answers as a standing cluster (`mr-master --serve`) has no
//! one job: the worker becomes a long-lived one ([`crate::agent`]). The
//! pieces both are built from live beside: the link ([`crate::link`],
//! [`crate::job_link`]), the job's storage ([`crate::job_setup`]) and the
//! slots ([`crate::slot`]).
//!
//! Shutdown: the worker stops at the first end any of its loops learns: a
//! slot told `Exit` by `request_task`, the heartbeat told `Exit` (the job
//! ended while every slot was busy with an attempt that no longer matters),
//! or the coordinator gone for good (not back within the reconnect
//! timeout, or back with another job). The coordinator tells every
//! connected worker how the job ended before it exits, so finding it gone
//! means it vanished mid-job: that is an error, not a normal end. Attempts
//! still running end with their task processes, which the kernel kills
//! when the worker exits; the work directory ([`crate::work_dir`]) goes
//! too, and one left by a worker that was killed is removed by the next
//! worker that starts with the same base.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::handshake::{Identity, ServerKind};
use crate::job_link::{self, JobDialer, JobLink};
use crate::link::{call_context, peer_error};
use crate::memory_budget::MemoryGauge;
use crate::plugin::{file_sha256, Plugin};
use crate::rpc::{Assignment, JobEnd};
use crate::slot::{self, SlotActivity, SlotThread, Task};
use crate::storage::WorkerStorage;
use crate::task_process::TaskProcess;
pub use crate::worker_config::{worker_id, WorkerConfig, WorkerError, WorkerExit};

/// How one of a worker's loops (a slot, the heartbeat) saw the job end.
type LoopEnd = Result<WorkerExit, WorkerError>;

/// Where a worker's app comes from.
pub enum AppSource {
    /// The plugin given on the command line (`mr-worker APP`).
    Given(Arc<Plugin>),
    /// The job's, fetched from the coordinator (`mr-worker` without APP,
    /// for a job started with `mr-master --app`).
    FromJob,
}

/// Runs tasks from the coordinator with the app from `app` until the job
/// ends; or, when the server is a cluster, runs as a long-lived worker of
/// it until `shutdown` completes ([`crate::agent::run`]). `shutdown` is
/// not polled with a one-job coordinator, so a signal handler it would
/// install stays uninstalled there (such a worker ends with its job, and a
/// signal ends it at once, as it always did).
pub async fn run(app: AppSource, config: WorkerConfig, shutdown: impl Future<Output = ()> + Send) -> Result<WorkerExit, WorkerError> {
    let identity = Identity::new(worker_id());
    let app_sha256 = match &app {
        AppSource::Given(plugin) => {
            Some(file_sha256(plugin.path()).map_err(|e| WorkerError::Setup(format!("reading the app {}: {e}", plugin.path().display())))?)
        }
        AppSource::FromJob => None,
    };
    let (client, local, kind) = job_link::connect(&config.master, config.secret.as_ref(), &identity, config.connect_timeout).await?;
    if kind == ServerKind::Cluster {
        // This connection asked for a one-job coordinator's RPC, which a
        // cluster does not serve at its own address: it goes unused.
        drop(client);
        return match app {
            AppSource::Given(_) => Err(WorkerError::ClusterNamesApps { master: config.master.clone() }),
            AppSource::FromJob => crate::agent::run(config, identity, shutdown).await,
        };
    }
    let id = identity.name.clone();
    let lost = |e: tarpc::client::RpcError| WorkerError::CoordinatorLost { master: config.master.clone(), error: peer_error(&e) };
    let spec = client
        .job(call_context(), app_sha256.clone())
        .await
        .map_err(lost)?
        .map_err(|why| WorkerError::AppRefused { master: config.master.clone(), why: peer_error(&why) })?;
    let base = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let job_storage = crate::job_setup::set_up_storage(&config, &config.master, &base, config.serve_on.as_deref(), &spec, &identity, local).await?;
    let storage = job_storage.storage.clone();
    let plugin = match app {
        AppSource::Given(plugin) => plugin,
        AppSource::FromJob => {
            let job_app = spec.app.as_ref().ok_or_else(|| WorkerError::NoApp { master: config.master.clone() })?;
            Arc::new(storage.fetch_app(job_app).await.map_err(|e| WorkerError::Setup(peer_error(&e)))?)
        }
    };
    tracing::info!(worker = %id, master = %config.master, app = plugin.name(), "connected");
    let start = crate::job_setup::child_start(&config, &identity, &spec, plugin.path().to_owned(), job_storage.child.clone(), 0);
    let dialer = JobDialer { address: config.master.clone(), secret: config.secret.clone(), identity, job_id: spec.job_id.clone(), app_sha256 };
    let link = Arc::new(dialer.into_link(client, config.reconnect_timeout));
    let interval = spec.heartbeat_interval;
    let slots: Arc<[SlotActivity]> = (0..config.slots.max(1)).map(|_| SlotActivity::default()).collect();
    let gauge = MemoryGauge::new(config.memory, slots.len());
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<LoopEnd>();
    // Spawned tasks do not inherit the caller's span (`worker{id=...}`): pass it on.
    {
        let (link, slots, gauge, end_tx) = (link.clone(), slots.clone(), gauge.clone(), end_tx.clone());
        tokio::spawn(
            async move {
                let _ = end_tx.send(send_heartbeats(&link, &slots, &gauge, interval).await);
            }
            .instrument(tracing::Span::current()),
        );
    }
    let mut stoppers = Vec::new();
    for slot in 0..slots.len() {
        // Each task process makes the app itself, while its slot asks for work.
        let process = TaskProcess::new(config.task_command.clone(), crate::task_protocol::ChildStart { slot, ..start.clone() }, gauge.slot(slot));
        let thread = SlotThread::spawn(slot, process).map_err(WorkerError::Thread)?;
        stoppers.push(thread.stopper());
        let (link, storage, slots, gauge, end_tx) = (link.clone(), storage.clone(), slots.clone(), gauge.clone(), end_tx.clone());
        tokio::spawn(
            async move {
                let _ = end_tx.send(run_slot(&thread, &link, &storage, &slots[slot], &gauge).await);
            }
            .instrument(tracing::Span::current()),
        );
    }
    drop(end_tx);
    // The first end any loop learns is the worker's. A slot that finished
    // its part while others still run sends nothing.
    let end = end_rx.recv().await.expect("the heartbeat loop runs until it sees the end");
    slot::stop_task_processes(&slots, stoppers).await;
    drop(job_storage);
    end
}

/// Sends a heartbeat every `interval` until the coordinator says the job is
/// over or is gone for good.
async fn send_heartbeats(link: &JobLink, slots: &[SlotActivity], gauge: &MemoryGauge, interval: std::time::Duration) -> LoopEnd {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Some(end) = job_link::send_heartbeat(link, slots, gauge.read()).await? {
            return job_end(end);
        }
    }
}

fn job_end(end: JobEnd) -> LoopEnd {
    match end {
        JobEnd::Succeeded => Ok(WorkerExit::JobDone),
        JobEnd::Failed(message) => Err(WorkerError::JobFailed(peer_error(&message))),
    }
}

/// The shortest time between two asks of a slot for a task, when the
/// first got `Wait`.
const WAIT_AGAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// One task slot: asks for a task, runs it on the slot's task process,
/// reports, until the job ends.
async fn run_slot(thread: &SlotThread, link: &JobLink, storage: &WorkerStorage, activity: &SlotActivity, gauge: &MemoryGauge) -> LoopEnd {
    loop {
        let asked = tokio::time::Instant::now();
        let task = match job_link::request_task(link).await? {
            // A coordinator holds the call while it has no task; one that
            // answers at once (a cluster's job does) must not make this spin.
            Assignment::Wait => {
                tokio::time::sleep_until(asked + WAIT_AGAIN).await;
                continue;
            }
            Assignment::Exit(end) => return job_end(end),
            Assignment::Map(task) => Task::Map(task),
            Assignment::Reduce(task) => Task::Reduce(task),
        };
        if let Some(report) = slot::run_task(thread, storage, activity, task).await {
            job_link::report_task(link, report, gauge.read()).await?;
        }
    }
}
