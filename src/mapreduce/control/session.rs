//! A long-lived worker's sessions: what it keeps for each job of the
//! cluster it works for, from the first task a slot takes of the job until
//! the job ends.
//!
//! A session is what a one-job worker sets up once at start
//! ([`crate::worker`]), for one job at `HOST:PORT/job-N`: the link to the
//! job's engine ([`JobLink`]), the job's spec, its storage (a work
//! directory and a file server of its own: attempt ids, and so the names
//! of attempts' files, are unique only within a job; [`crate::job_setup`]),
//! its app (by SHA-256, from the worker's [`AppCache`]), and a heartbeat
//! loop that sends the job the progress of this job's running attempts
//! only, and stops those the job no longer needs.
//!
//! A session ends ([`Sessions::end`]) when its job says `Exit` (to a
//! heartbeat or to a slot's `request_task`), when its link loses the job
//! for good (the job's engine gone), or when the worker stops. Ending
//! cancels the job's running attempts and stops its heartbeat and file
//! server at once; its work directory goes when the last slot that ran a
//! task of it lets go of it. A job that ended is remembered, so that a
//! late offer of it does not open a session again.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::app_cache::{AppCache, AppCacheError};
use crate::cluster::queue::JobId;
use crate::files::Fetcher;
use crate::handshake::Identity;
use crate::job_link::{self, ConnectError, JobDialer, JobLink};
use crate::link::call_context;
use crate::rpc::{JobEnd, JobSpec};
use crate::slot::SlotActivity;
use crate::storage::WorkerStorage;
use crate::task_protocol::ChildStart;
use crate::work_dir::WorkDir;
use crate::worker_config::{WorkerConfig, WorkerError};

/// How many ended jobs a worker remembers (their ids only), so that a late
/// offer of one does not open a session again. Ids grow, so the oldest
/// are dropped first.
const ENDED_JOBS_KEPT: usize = 4096;

/// How long a job whose session could not be opened is not tried again
/// by this worker.
const OPEN_RETRY: Duration = Duration::from_secs(5);

/// Why a job's session could not be opened.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum SessionError {
    /// The job's engine did not answer.
    #[error("cannot reach {job} at {address}: {error}")]
    Unreachable { job: JobId, address: String, error: String },
    /// The job's engine refused this worker.
    #[error("{job} at {address} refused this worker: {why}")]
    Refused { job: JobId, address: String, why: String },
    /// The job names no app for workers to fetch.
    #[error("{job} names no app: a cluster's jobs must name theirs")]
    NoApp { job: JobId },
    /// Its work directory or file server could not be set up.
    #[error("{job}: {error}")]
    Setup { job: JobId, error: WorkerError },
    /// Its app could not be fetched.
    #[error("{job}: {error}")]
    App { job: JobId, error: AppCacheError },
}

/// What every session of a worker is made from.
pub struct SessionSetup {
    /// The worker's settings; `master` is the cluster's `HOST:PORT`.
    pub config: WorkerConfig,
    /// The worker, as the cluster and every job know it.
    pub identity: Identity,
    /// Where sessions make their work directories.
    pub base: PathBuf,
    /// Where sessions' file servers listen (a free port each); `None`: on
    /// the address this worker reaches the job from.
    pub serve_on: Option<String>,
    /// The apps fetched so far.
    pub apps: AppCache,
    /// The worker's slots.
    pub slots: usize,
}

/// One job's session (see the module docs).
pub struct Session {
    job: JobId,
    link: JobLink,
    spec: JobSpec,
    storage: Arc<WorkerStorage>,
    /// How this job's task processes start; `slot` is set per slot.
    start: ChildStart,
    /// What each of the worker's slots runs for this job, by slot index.
    activity: Box<[SlotActivity]>,
    /// Set once, by [`Session::end`].
    ended: AtomicBool,
    /// The heartbeat loop, once started.
    heartbeat: Mutex<Option<tokio::task::AbortHandle>>,
    file_server: tokio::task::AbortHandle,
    /// Removed when the session is dropped.
    _work_dir: WorkDir,
}

impl Session {
    /// The job.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The link to the job's engine.
    pub fn link(&self) -> &JobLink {
        &self.link
    }

    /// The job's storage on this worker.
    pub fn storage(&self) -> &WorkerStorage {
        &self.storage
    }

    /// The start of slot `slot`'s task process for this job.
    pub fn child_start(&self, slot: usize) -> ChildStart {
        ChildStart { slot, ..self.start.clone() }
    }

    /// What slot `slot` runs for this job (`None` past the worker's slots).
    pub fn activity(&self, slot: usize) -> Option<&SlotActivity> {
        self.activity.get(slot)
    }

    /// Whether the session has ended: nothing more is sent to its job.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Ends the session (once): cancels the job's running attempts, stops
    /// its heartbeat and file server.
    fn end(&self) -> bool {
        if self.ended.swap(true, Ordering::AcqRel) {
            return false;
        }
        for slot in self.activity.iter() {
            slot.cancel();
        }
        self.file_server.abort();
        // Last: this may be the heartbeat loop itself, which ends at its next await.
        if let Some(heartbeat) = self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()).take() {
            heartbeat.abort();
        }
        true
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end();
    }
}

/// A worker's sessions by job (see the module docs).
pub struct Sessions {
    setup: SessionSetup,
    /// A cell per job a slot asked for: filled by the first slot that
    /// opens the session, while the others wait for it.
    open: Mutex<HashMap<JobId, Arc<tokio::sync::OnceCell<Arc<Session>>>>>,
    /// Jobs whose sessions ended, newest kept.
    ended: Mutex<BTreeSet<JobId>>,
    /// Jobs whose session could not be opened, and when.
    failed: Mutex<HashMap<JobId, Instant>>,
}

impl Sessions {
    /// No sessions yet.
    pub fn new(setup: SessionSetup) -> Sessions {
        Sessions { setup, open: Mutex::default(), ended: Mutex::default(), failed: Mutex::default() }
    }

    /// The session of `job`, opened if it is not yet; `Ok(None)` if the job
    /// ended, or its session failed to open within [`OPEN_RETRY`].
    pub async fn get_or_open(self: &Arc<Self>, job: JobId) -> Result<Option<Arc<Session>>, SessionError> {
        if lock(&self.ended).contains(&job) {
            return Ok(None);
        }
        if lock(&self.failed).get(&job).is_some_and(|at| at.elapsed() < OPEN_RETRY) {
            return Ok(None);
        }
        let cell = lock(&self.open).entry(job).or_default().clone();
        let opened = cell.get_or_try_init(|| self.open_session(job)).await;
        match opened {
            Ok(session) => Ok(Some(session.clone())),
            Err(e) => {
                lock(&self.failed).insert(job, Instant::now());
                Err(e)
            }
        }
    }

    /// Ends `job`'s session, if it has one, saying `why` in the log.
    pub fn end(&self, job: JobId, why: &str) {
        let cell = lock(&self.open).remove(&job);
        {
            let mut ended = lock(&self.ended);
            ended.insert(job);
            while ended.len() > ENDED_JOBS_KEPT {
                ended.pop_first();
            }
        }
        lock(&self.failed).remove(&job);
        if let Some(session) = cell.as_ref().and_then(|cell| cell.get()) {
            if session.end() {
                tracing::info!(%job, "session ended: {why}");
            }
        }
    }

    /// Ends every session (the worker stops).
    pub fn end_all(&self, why: &str) {
        let jobs: Vec<JobId> = lock(&self.open).keys().copied().collect();
        for job in jobs {
            self.end(job, why);
        }
    }

    /// Attempts running now, in every session.
    pub fn running(&self) -> usize {
        let sessions: Vec<Arc<Session>> = lock(&self.open).values().filter_map(|cell| cell.get().cloned()).collect();
        sessions.iter().map(|session| session.activity.iter().filter(|slot| slot.snapshot().is_some()).count()).sum()
    }

    /// Opens `job`'s session and starts its heartbeat.
    async fn open_session(self: &Arc<Self>, job: JobId) -> Result<Arc<Session>, SessionError> {
        let SessionSetup { config, identity, base, serve_on, apps, slots } = &self.setup;
        let address = crate::route::job_address(&config.master, job.0);
        let (client, local, _) = job_link::open_connection(&address, config.secret.as_ref(), identity).await.map_err(|e| match e {
            ConnectError::Network(error) => SessionError::Unreachable { job, address: address.clone(), error },
            ConnectError::Refused(e) => SessionError::Refused { job, address: address.clone(), why: e.to_string() },
        })?;
        let spec = client
            .job(call_context(), None)
            .await
            .map_err(|e| SessionError::Unreachable { job, address: address.clone(), error: e.to_string() })?
            .map_err(|why| SessionError::Refused { job, address: address.clone(), why })?;
        let app = spec.app.clone().ok_or(SessionError::NoApp { job })?;
        let storage = crate::job_setup::set_up_storage(config, &address, base, serve_on.as_deref(), &spec, identity, local)
            .await
            .map_err(|error| SessionError::Setup { job, error })?;
        let fetcher = Fetcher::new(config.secret.clone(), identity.clone());
        let plugin = match apps.get(&app, &fetcher, &address).await {
            Ok(plugin) => plugin,
            Err(error) => {
                storage.file_server.abort();
                return Err(SessionError::App { job, error });
            }
        };
        let start = crate::job_setup::child_start(config, identity, &spec, plugin, storage.child.clone(), 0);
        let dialer = JobDialer { address, secret: config.secret.clone(), identity: identity.clone(), job_id: spec.job_id.clone(), app_sha256: None };
        let session = Arc::new(Session {
            job,
            link: dialer.into_link(client, config.reconnect_timeout),
            spec,
            storage: storage.storage,
            start,
            activity: (0..*slots).map(|_| SlotActivity::default()).collect(),
            ended: AtomicBool::new(false),
            heartbeat: Mutex::new(None),
            file_server: storage.file_server.abort_handle(),
            _work_dir: storage.work_dir,
        });
        let heartbeat = tokio::spawn(
            send_heartbeats(Arc::downgrade(self), Arc::downgrade(&session), session.spec.heartbeat_interval)
                .instrument(tracing::info_span!("job", %job)),
        );
        *lock(&session.heartbeat) = Some(heartbeat.abort_handle());
        tracing::info!(%job, app = %app.file_name, "session opened");
        Ok(session)
    }
}

/// Sends `session`'s heartbeats every `interval` until it ends, and ends it
/// when the job says so or is gone for good.
async fn send_heartbeats(sessions: Weak<Sessions>, session: Weak<Session>, interval: Duration) {
    // The interval is the peer's: a zero one must not spin.
    let mut ticker = tokio::time::interval(interval.max(MIN_HEARTBEAT_INTERVAL));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(session) = session.upgrade().filter(|session| !session.is_ended()) else { return };
        let why = match job_link::send_heartbeat(&session.link, &session.activity).await {
            Ok(None) => continue,
            Ok(Some(end)) => describe_end(&end),
            Err(lost) => format!("lost the job: {lost}"),
        };
        if let Some(sessions) = sessions.upgrade() {
            sessions.end(session.job, &why);
        }
        return;
    }
}

/// The shortest heartbeat interval a session keeps, whatever the job says.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// How a job ended, for the log.
pub fn describe_end(end: &JobEnd) -> String {
    match end {
        JobEnd::Succeeded => "the job succeeded".to_owned(),
        JobEnd::Failed(why) => format!("the job failed: {why}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
