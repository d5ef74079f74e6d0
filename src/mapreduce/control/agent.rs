//! The long-lived worker of a standing cluster (`mr-worker --master
//! HOST:PORT` without an APP, when the server there is `mr-master
//! --serve`): it joins the cluster's pool and runs tasks of whichever jobs
//! the cluster gives its free slots, until it is told to stop.
//!
//! ```text
//! agent                                 cluster (HOST:PORT)
//!   | handshake, 'C' ------------------>  |  one connection for the cluster's API
//!   | join(labels, slots, cores) ------>  |
//!   | <--------- Welcome{interval} -----  |
//!   | agent_heartbeat(load, memory) --->  |  every interval, from its own loop;
//!   | <------ Continue / JoinAgain -----  |  JoinAgain: join again
//!   | next_job() ---------------------->  |  per free slot (held up to 1 s)
//!   | <------------- Some(job N) -------  |
//!   |   session of job N (opened once, at HOST:PORT/job-N: see crate::session)
//!   |   request_task() on job N ------->  |  one task: Map/Reduce → run it on the
//!   |   report_task(...) -------------->  |  slot's task process, report;
//!   |                                     |  Wait → back; Exit → session ends
//!   | next_job() ...                      |  the slot asks again: slots are
//! ```                                        lent task by task (fair share)
//!
//! Each slot owns a thread and a task process ([`crate::slot`]), which runs
//! one job's app: the slot replaces it when it takes a task of another job,
//! and shuts it down once the job's session has ended.
//!
//! Ends: the cluster's link lost for good (not back within the reconnect
//! timeout) ends the worker with an error; a job's link lost ends only that
//! job's session. `shutdown` (SIGTERM, Ctrl-C) drains: the slots stop
//! asking for work, the running attempts finish and report (cancelled after
//! [`WorkerConfig::drain_timeout`]), every session ends, the work
//! directory goes, and the worker exits normally.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tarpc::client;
use tarpc::tokio_serde::formats::Bincode;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::app_cache::AppCache;
use crate::cluster::api::{AgentReply, ClusterApiClient, JoinOffer, Welcome};
use crate::cluster::queue::JobId;
use crate::handshake::{self, Identity, ServerKind};
use crate::job_link;
use crate::link::{call_context, peer_error, Dial, Link, LinkLost, Redial, CONNECT_RETRY};
use crate::memory_budget::MemoryGauge;
use crate::rpc::Assignment;
use crate::session::{describe_end, Session, SessionSetup, Sessions, MIN_HEARTBEAT_INTERVAL};
use crate::slot::{self, SlotThread, Task, SHUTDOWN_WAIT};
use crate::task_process::{TaskCommand, TaskProcess};
use crate::work_dir::WorkDir;
use crate::worker_config::{WorkerConfig, WorkerError, WorkerExit};

/// The link to the cluster's own API.
type ClusterLink = Link<ClusterDialer>;

/// Runs as a long-lived worker of the cluster at `config.master`, as
/// `identity` (the same in every connection: the cluster knows the worker
/// by it), until `shutdown` completes (then drains: see the module docs) or
/// the cluster is gone for good.
pub async fn run(config: WorkerConfig, identity: Identity, shutdown: impl Future<Output = ()> + Send) -> Result<WorkerExit, WorkerError> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let slots = config.slots.max(1);
    let serve_on = sessions_serve_on(config.serve_on.as_deref())?;
    let base = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let setup = |what: String, e: std::io::Error| WorkerError::Setup(format!("{what}: {e}"));
    let (work_dir, _) = WorkDir::create(&base).map_err(|e| setup(format!("cannot make a work directory in {}", base.display()), e))?;
    let apps = AppCache::new(work_dir.path().join("apps")).map_err(|e| WorkerError::Setup(e.to_string()))?;

    let dialer = ClusterDialer { master: config.master.clone(), secret: config.secret.clone(), identity: identity.clone() };
    let client = connect_cluster(&dialer, config.connect_timeout).await?;
    let peer = format!("the cluster at {}", config.master);
    let cluster = Arc::new(Link::new(dialer, client, config.master.clone(), peer, config.reconnect_timeout));
    let offer =
        JoinOffer { labels: config.labels.clone(), slots: u32::try_from(slots).unwrap_or(u32::MAX), cores: u32::try_from(cores).unwrap_or(u32::MAX) };
    let welcome = join(&cluster, &offer).await?;
    let labels: Vec<String> = offer.labels.iter().map(ToString::to_string).collect();
    tracing::info!(slots, labels = %labels.join(","), work_dir = %work_dir.path().display(), "joined the cluster at {}", config.master);

    let (drain_timeout, task_command) = (config.drain_timeout, config.task_command.clone());
    let gauge = MemoryGauge::new(config.memory, slots);
    let sessions = Arc::new(Sessions::new(SessionSetup { base: work_dir.path().to_owned(), serve_on, apps, slots, config, identity, gauge }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<WorkerError>();
    let heartbeat = {
        let (cluster, fatal_tx, work_dir, gauge) = (cluster.clone(), fatal_tx.clone(), work_dir.path().to_owned(), sessions.gauge().clone());
        let interval = welcome.heartbeat_interval;
        tokio::spawn(
            async move {
                let _ = fatal_tx.send(send_heartbeats(&cluster, &offer, interval, &work_dir, &gauge).await);
            }
            .instrument(tracing::Span::current()),
        )
    };
    let mut slot_loops = tokio::task::JoinSet::new();
    for slot in 0..slots {
        let agent = Agent { cluster: cluster.clone(), sessions: sessions.clone(), task_command: task_command.clone() };
        let (stop, fatal_tx) = (stop_rx.clone(), fatal_tx.clone());
        slot_loops.spawn(
            async move {
                if let Err(e) = run_slot(slot, &agent, stop).await {
                    let _ = fatal_tx.send(e);
                }
            }
            .instrument(tracing::info_span!("slot", slot)),
        );
    }
    drop(fatal_tx);

    let outcome = tokio::select! {
        () = shutdown => Ok(WorkerExit::Drained),
        Some(error) = fatal_rx.recv() => Err(error),
    };
    let _ = stop_tx.send(true);
    match &outcome {
        Ok(_) => {
            let running = sessions.running();
            tracing::info!(
                "draining: no new tasks; waiting up to {} s for {running} running attempts to finish and report",
                drain_timeout.as_secs_f64()
            );
            let started = Instant::now();
            if tokio::time::timeout(drain_timeout, join_all(&mut slot_loops)).await.is_err() {
                tracing::warn!("drain timeout: cancelling {} attempts still running", sessions.running());
                sessions.end_all("the worker is stopping");
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, join_all(&mut slot_loops)).await;
            }
            tracing::info!("drained in {:.1} s; leaving the cluster", started.elapsed().as_secs_f64());
        }
        Err(_) => {
            sessions.end_all("the worker is stopping");
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, join_all(&mut slot_loops)).await;
        }
    }
    sessions.end_all("the worker is stopping");
    slot_loops.abort_all();
    heartbeat.abort();
    drop(sessions);
    drop(work_dir);
    outcome
}

/// Waits for every task of `set` to end.
async fn join_all(set: &mut tokio::task::JoinSet<()>) {
    while set.join_next().await.is_some() {}
}

/// Where the sessions' file servers listen, from `--serve-on`: each session
/// has its own, so only the host is the user's; the port must be 0.
fn sessions_serve_on(serve_on: Option<&str>) -> Result<Option<String>, WorkerError> {
    match serve_on {
        None => Ok(None),
        Some(addr) if addr.rsplit_once(':').is_some_and(|(_, port)| port == "0") => Ok(Some(addr.to_owned())),
        Some(addr) => Err(WorkerError::Setup(format!(
            "--serve-on {addr}: a worker of a cluster serves each job's map output on a port of its own; give HOST:0"
        ))),
    }
}

/// What a slot loop shares with the others.
struct Agent {
    cluster: Arc<ClusterLink>,
    sessions: Arc<Sessions>,
    task_command: TaskCommand,
}

/// A slot's thread and the job its task process runs.
struct SlotProcess {
    thread: SlotThread,
    /// The job whose app the task process runs, while its session lasts;
    /// `None` once the process was shut down.
    job: Option<(JobId, Weak<Session>)>,
}

/// The shortest time a slot's round that ran no task takes (asking the
/// cluster for a job, and that job for a task): a cluster that answers
/// `next_job` at once (one this worker has not joined yet does), or a job
/// that answers `Wait` to every offer of it, must not make a slot spin.
const IDLE_ROUND: Duration = Duration::from_millis(100);

/// One slot: asks the cluster which job to serve, takes one task of it,
/// runs and reports it, and asks again; until `stop`, or the cluster is
/// gone for good (the error). A job that answered `Wait` is declined in
/// the next ask, so that the cluster offers another job if it has one.
async fn run_slot(slot: usize, agent: &Agent, mut stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
    let mut process: Option<SlotProcess> = None;
    let mut waited: Option<JobId> = None;
    let result = loop {
        if *stop.borrow() {
            break Ok(());
        }
        let round = tokio::time::Instant::now();
        retire_ended(&mut process).await;
        let declined = declined(agent.sessions.declined(), waited.take());
        let next_job = |client: ClusterApiClient| {
            let declined = declined.clone();
            async move { client.next_job(call_context(), declined).await }
        };
        let next = tokio::select! {
            next = agent.cluster.call(next_job) => next,
            _ = stop.wait_for(|stop| *stop) => break Ok(()),
        };
        let served = match next {
            Ok(Some(job)) => match agent.sessions.get_or_open(job).await {
                // Draining: the session may have taken a while.
                Some(_) if *stop.borrow() => break Ok(()),
                Some(session) => {
                    let served = serve_one_task(slot, agent, &session, &mut process).instrument(tracing::info_span!("job", %job)).await;
                    match served {
                        Ok(served) => served,
                        Err(e) => break Err(e),
                    }
                }
                // Declined from now on: see `Sessions::get_or_open`.
                None => Served::Nothing,
            },
            Ok(None) => Served::Nothing,
            Err(lost) => break Err(cluster_lost(lost)),
        };
        match served {
            Served::Task => continue,
            Served::Wait(job) => waited = Some(job),
            Served::Nothing => {}
        }
        tokio::select! {
            () = tokio::time::sleep_until(round + IDLE_ROUND) => {}
            _ = stop.wait_for(|stop| *stop) => break Ok(()),
        }
    };
    if let Some(process) = process {
        process.thread.stopper().stop().await;
    }
    result
}

/// The jobs a slot declines in its next `next_job`: the worker's, and the
/// one that just answered `Wait`.
fn declined(mut declined: Vec<JobId>, waited: Option<JobId>) -> Vec<JobId> {
    if let Some(job) = waited.filter(|job| !declined.contains(job)) {
        declined.push(job);
    }
    declined
}

/// What a slot's round did.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// Ran a task (or took one and lost it): ask again at once.
    Task,
    /// The job had no task for this worker.
    Wait(JobId),
    /// No task: no job offered, or its session is not there (any more).
    Nothing,
}

/// Asks `session`'s job for one task and, given one, runs it on the slot's
/// task process and reports it. Fails only if the slot's thread cannot be
/// started.
async fn serve_one_task(slot: usize, agent: &Agent, session: &Arc<Session>, process: &mut Option<SlotProcess>) -> Result<Served, WorkerError> {
    let job = session.job();
    let task = match job_link::request_task(session.link()).await {
        Ok(Assignment::Map(task)) => Task::Map(task),
        Ok(Assignment::Reduce(task)) => Task::Reduce(task),
        Ok(Assignment::Wait) => return Ok(Served::Wait(job)),
        Ok(Assignment::Exit(end)) => {
            agent.sessions.end(session, &describe_end(&end));
            return Ok(Served::Nothing);
        }
        Err(lost) => {
            agent.sessions.lost(session, &format!("lost the job: {lost}"));
            return Ok(Served::Nothing);
        }
    };
    let Some(activity) = session.activity(slot) else {
        tracing::error!("slot {slot} has no place in the session of {job}");
        return Ok(Served::Nothing);
    };
    let thread = run_job_on(slot, session, process, agent).await?;
    let Some(report) = slot::run_task(thread, session.storage(), activity, task).await else { return Ok(Served::Task) };
    if session.is_ended() {
        return Ok(Served::Task);
    }
    if let Err(lost) = job_link::report_task(session.link(), report, agent.sessions.gauge().read()).await {
        agent.sessions.lost(session, &format!("lost the job: {lost}"));
    }
    Ok(Served::Task)
}

/// The slot's thread, its task process set to run `session`'s job: started
/// if the slot has none, replaced if it runs another job's app.
async fn run_job_on<'a>(
    slot: usize,
    session: &Arc<Session>,
    process: &'a mut Option<SlotProcess>,
    agent: &Agent,
) -> Result<&'a SlotThread, WorkerError> {
    let job = (session.job(), Arc::downgrade(session));
    let fresh = TaskProcess::new(agent.task_command.clone(), session.child_start(slot), agent.sessions.gauge().slot(slot));
    match process {
        Some(current) => {
            if current.job.as_ref().map(|(id, _)| *id) != Some(session.job()) {
                let replaced = current.thread.run(move |process| {
                    process.shut_down();
                    *process = fresh;
                });
                if replaced.await.is_err() {
                    tracing::error!("replacing the task process panicked");
                }
                current.job = Some(job);
            }
            Ok(&current.thread)
        }
        None => {
            let thread = SlotThread::spawn(slot, fresh).map_err(WorkerError::Thread)?;
            Ok(&process.insert(SlotProcess { thread, job: Some(job) }).thread)
        }
    }
}

/// Shuts the slot's task process down if its job's session has ended: an
/// idle process of a finished job holds its app's memory for nothing.
async fn retire_ended(process: &mut Option<SlotProcess>) {
    let Some(current) = process else { return };
    let ended = current.job.as_ref().is_some_and(|(_, session)| session.upgrade().is_none_or(|session| session.is_ended()));
    if ended {
        current.job = None;
        if current.thread.run(TaskProcess::shut_down).await.is_err() {
            tracing::error!("shutting down the task process panicked");
        }
    }
}

/// Joins the cluster with `offer`.
async fn join(cluster: &ClusterLink, offer: &JoinOffer) -> Result<Welcome, WorkerError> {
    let call = |client: ClusterApiClient| {
        let offer = offer.clone();
        async move { client.join(call_context(), offer).await }
    };
    let joined = cluster.call(call).await.map_err(cluster_lost)?;
    joined.map_err(|why| WorkerError::JoinRefused { master: cluster.address().to_owned(), why: peer_error(&why) })
}

/// Sends the cluster a heartbeat with the machine's load every `interval`
/// (joining again when the cluster asks), until the cluster is gone for
/// good or refuses this worker: the error.
async fn send_heartbeats(cluster: &ClusterLink, offer: &JoinOffer, interval: Duration, work_dir: &Path, gauge: &MemoryGauge) -> WorkerError {
    let mut interval = interval.max(MIN_HEARTBEAT_INTERVAL);
    loop {
        tokio::time::sleep(interval).await;
        // Off the runtime: statvfs on a hung network file system blocks.
        let dir = work_dir.to_owned();
        let load = tokio::task::spawn_blocking(move || crate::machine_load::read(&dir)).await.ok().flatten();
        let memory = gauge.read();
        let heartbeat = |client: ClusterApiClient| async move { client.agent_heartbeat(call_context(), load, memory).await };
        match cluster.call(heartbeat).await {
            Ok(AgentReply::Continue) => {}
            Ok(AgentReply::JoinAgain) => {
                tracing::info!("the cluster asks this worker to join again");
                match join(cluster, offer).await {
                    Ok(welcome) => interval = welcome.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL),
                    Err(e) => return e,
                }
            }
            Err(lost) => return cluster_lost(lost),
        }
    }
}

fn cluster_lost(lost: LinkLost) -> WorkerError {
    WorkerError::ClusterLost { master: lost.address, error: lost.error }
}

/// Dials the cluster's API at `HOST:PORT`.
struct ClusterDialer {
    master: String,
    secret: Option<crate::handshake::Secret>,
    identity: Identity,
}

/// Why one try at the cluster gave no client.
enum ClusterConnectError {
    /// Worth trying again.
    Network(String),
    /// A refusal, or no cluster there.
    Refused(String),
}

impl ClusterDialer {
    async fn open(&self) -> Result<ClusterApiClient, ClusterConnectError> {
        let dialed = handshake::dial_learning(&self.master, self.secret.as_ref(), &self.identity, crate::route::SERVICE_CLUSTER, None).await;
        let (stream, kind) = dialed.map_err(|e| match e.is_transient() {
            true => ClusterConnectError::Network(peer_error(&e)),
            false => ClusterConnectError::Refused(peer_error(&e)),
        })?;
        if kind != ServerKind::Cluster {
            return Err(ClusterConnectError::Refused("the server there is not a cluster (any more)".to_owned()));
        }
        let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
        Ok(ClusterApiClient::new(client::Config::default(), transport).spawn())
    }
}

impl Dial for ClusterDialer {
    type Client = ClusterApiClient;

    async fn dial(&self) -> Result<ClusterApiClient, Redial> {
        self.open().await.map_err(|e| match e {
            ClusterConnectError::Network(e) => Redial::Failed(e),
            ClusterConnectError::Refused(why) => Redial::Gone(format!("the cluster there now refuses this worker: {why}")),
        })
    }
}

/// The first connection to the cluster's API, retried until `timeout`.
async fn connect_cluster(dialer: &ClusterDialer, timeout: Duration) -> Result<ClusterApiClient, WorkerError> {
    let give_up = Instant::now() + timeout;
    loop {
        match dialer.open().await {
            Ok(client) => return Ok(client),
            Err(ClusterConnectError::Refused(why)) => return Err(WorkerError::JoinRefused { master: dialer.master.clone(), why }),
            Err(ClusterConnectError::Network(e)) if Instant::now() + CONNECT_RETRY < give_up => {
                tracing::debug!("the cluster at {} is not reachable yet: {e}", dialer.master);
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(ClusterConnectError::Network(last_error)) => {
                return Err(WorkerError::Unreachable { master: dialer.master.clone(), timeout, last_error })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_serve_on_a_free_port_of_the_given_host() {
        assert_eq!(sessions_serve_on(None).unwrap(), None);
        assert_eq!(sessions_serve_on(Some("10.0.0.5:0")).unwrap().as_deref(), Some("10.0.0.5:0"));
        assert_eq!(sessions_serve_on(Some("[::]:0")).unwrap().as_deref(), Some("[::]:0"));
        let error = sessions_serve_on(Some("10.0.0.5:7000")).unwrap_err().to_string();
        assert!(error.contains("give HOST:0"), "{error}");
    }
}
