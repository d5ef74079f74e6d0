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
//! task of it lets go of it. A job that ended is remembered by the
//! cluster's id and its own (a cluster restarted on a fresh state
//! directory numbers its jobs from 1 again), so that a late offer of it
//! opens no session again; a job whose session could not be opened is not
//! tried again for [`DECLINE_FOR`]. Both kinds are declined in the slots'
//! `next_job`, so that the cluster offers other jobs meanwhile; a failure
//! is logged once per job.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
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
use crate::link::{call_context, peer_error};
use crate::memory_budget::MemoryGauge;
use crate::rpc::{JobEnd, JobSpec};
use crate::slot::SlotActivity;
use crate::storage::WorkerStorage;
use crate::task_protocol::ChildStart;
use crate::untrusted::{excerpt, EXCERPT_CHARS};
use crate::work_dir::WorkDir;
use crate::worker_config::{WorkerConfig, WorkerError};

/// How many ended jobs a worker remembers, so that a late offer of one
/// does not open a session again; the oldest are forgotten first.
const ENDED_JOBS_KEPT: usize = 4096;

/// How long a worker declines a job whose session could not be opened, or
/// an ended job the cluster still offers: it tells the cluster so in
/// `next_job`, which offers another job meanwhile.
pub const DECLINE_FOR: Duration = Duration::from_secs(5);

/// How long a job's failure to open a session is remembered: one that
/// fails again within it is not logged again.
const FAILURES_KEPT_FOR: Duration = Duration::from_secs(60);

/// The most jobs remembered as failed, or as ended and still offered: the
/// oldest go first.
const DECLINES_KEPT: usize = 256;

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
    /// The worker's memory, as its heartbeats and reports tell each job.
    pub gauge: MemoryGauge,
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
    /// opens the session, while the others wait for it. A cell whose
    /// session failed to open is removed, as is one whose session ended.
    open: Mutex<HashMap<JobId, Arc<tokio::sync::OnceCell<Arc<Session>>>>>,
    /// The jobs that ended, failed to open or are declined.
    memory: Mutex<JobMemory>,
}

/// Why no session came of an offer.
enum Unopened {
    /// Declined (see [`JobMemory::is_declined`]): nothing tried.
    Declined,
    /// The job the cluster offers under this id has ended on this worker.
    Ended,
    /// Opening it failed.
    Failed(SessionError),
}

impl Sessions {
    /// No sessions yet.
    pub fn new(setup: SessionSetup) -> Sessions {
        Sessions { setup, open: Mutex::default(), memory: Mutex::default() }
    }

    /// The jobs this worker declines now (for the cluster's `next_job`):
    /// those whose session failed to open, and the ended ones the cluster
    /// still offered, within [`DECLINE_FOR`].
    pub fn declined(&self) -> Vec<JobId> {
        lock(&self.memory).declined(Instant::now())
    }

    /// The session of `job`, opened if it is not yet; `None` if the job
    /// ended, is declined now, or its session failed to open (logged once
    /// per job, however often the cluster offers it).
    pub async fn get_or_open(self: &Arc<Self>, job: JobId) -> Option<Arc<Session>> {
        if lock(&self.memory).is_declined(job, Instant::now()) {
            return None;
        }
        let cell = lock(&self.open).entry(job).or_default().clone();
        let init = || async {
            // A slot that waited for another's failed try does not try again.
            if lock(&self.memory).is_declined(job, Instant::now()) {
                return Err(Unopened::Declined);
            }
            self.open_session(job).await
        };
        let why = match cell.get_or_try_init(init).await {
            Ok(session) => {
                lock(&self.memory).opened(job);
                return Some(session.clone());
            }
            Err(why) => why,
        };
        // Remembered before the cell goes, so that no slot tries at once again.
        let now = Instant::now();
        match why {
            Unopened::Declined => {}
            Unopened::Ended => {
                if lock(&self.memory).offered_ended(job, now) {
                    tracing::debug!(%job, "the cluster offers a job that ended here; declining it");
                }
            }
            Unopened::Failed(error) => {
                let first = lock(&self.memory).failed(job, now);
                let error = crate::errors::one_line(&error);
                match first {
                    true => tracing::warn!(%job, "cannot work for the job (declining it for {} s): {error}", DECLINE_FOR.as_secs()),
                    false => tracing::debug!(%job, "cannot work for the job (again): {error}"),
                }
            }
        }
        let mut open = lock(&self.open);
        if open.get(&job).is_some_and(|current| Arc::ptr_eq(current, &cell) && current.get().is_none()) {
            open.remove(&job);
        }
        None
    }

    /// Ends `session`, whose job is over (or should be, for this worker),
    /// saying `why` in the log: a late offer of the same job is declined.
    pub fn end(&self, session: &Session, why: &str) {
        lock(&self.memory).ended(session.job, &session.spec.job_id);
        self.close(session, why);
    }

    /// Ends `session`, whose job's engine is gone for good (`why`): the job
    /// is declined for [`DECLINE_FOR`], then the cluster may offer it again
    /// (its engine may be back, as a cluster restarted after the reconnect
    /// timeout resumes its jobs).
    pub fn lost(&self, session: &Session, why: &str) {
        lock(&self.memory).failed(session.job, Instant::now());
        self.close(session, why);
    }

    /// Ends every session (the worker stops).
    pub fn end_all(&self, why: &str) {
        let sessions: Vec<Arc<Session>> = lock(&self.open).values().filter_map(|cell| cell.get().cloned()).collect();
        for session in sessions {
            self.close(&session, why);
        }
    }

    /// The worker's memory gauge.
    pub fn gauge(&self) -> &MemoryGauge {
        &self.setup.gauge
    }

    /// Attempts running now, in every session.
    pub fn running(&self) -> usize {
        let sessions: Vec<Arc<Session>> = lock(&self.open).values().filter_map(|cell| cell.get().cloned()).collect();
        sessions.iter().map(|session| session.activity.iter().filter(|slot| slot.snapshot().is_some()).count()).sum()
    }

    /// Ends `session` and forgets it: only it, not a newer session of the
    /// same job id (a cluster restarted on a fresh state directory numbers
    /// its jobs from 1 again).
    fn close(&self, session: &Session, why: &str) {
        {
            let mut open = lock(&self.open);
            let current = open.get(&session.job).and_then(|cell| cell.get());
            if current.is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), session)) {
                open.remove(&session.job);
            }
        }
        if session.end() {
            tracing::info!(job = %session.job, "session ended: {why}");
        }
    }

    /// Opens `job`'s session and starts its heartbeat.
    async fn open_session(self: &Arc<Self>, job: JobId) -> Result<Arc<Session>, Unopened> {
        let SessionSetup { config, identity, base, serve_on, apps, slots, .. } = &self.setup;
        let address = crate::route::job_address(&config.master, job.0);
        let failed = Unopened::Failed;
        let (client, local, _) = job_link::open_connection(&address, config.secret.as_ref(), identity).await.map_err(|e| match e {
            ConnectError::Network(error) => failed(SessionError::Unreachable { job, address: address.clone(), error }),
            ConnectError::Refused(e) => failed(SessionError::Refused { job, address: address.clone(), why: peer_error(&e) }),
        })?;
        let spec = client
            .job(call_context(), None)
            .await
            .map_err(|e| failed(SessionError::Unreachable { job, address: address.clone(), error: peer_error(&e) }))?
            .map_err(|why| failed(SessionError::Refused { job, address: address.clone(), why: peer_text(&why) }))?;
        // The cluster's id and the job's own: a cluster restarted on a
        // fresh state directory gives the id of an ended job to a new one.
        if lock(&self.memory).is_ended(job, &spec.job_id) {
            return Err(Unopened::Ended);
        }
        let app = spec.app.clone().ok_or(failed(SessionError::NoApp { job }))?;
        let storage = crate::job_setup::set_up_storage(config, &address, base, serve_on.as_deref(), &spec, identity, local)
            .await
            .map_err(|error| failed(SessionError::Setup { job, error }))?;
        let fetcher = Fetcher::new(config.secret.clone(), identity.clone());
        let plugin = match apps.get(&app, &fetcher, &address).await {
            Ok(plugin) => plugin,
            Err(error) => {
                storage.file_server.abort();
                return Err(failed(SessionError::App { job, error }));
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
        tracing::info!(%job, app = %peer_text(&app.file_name), "session opened");
        Ok(session)
    }
}

/// What a worker remembers of the jobs it has no session of (see
/// [`Sessions`]); every entry bounded in number, and the declines in time.
#[derive(Debug, Default)]
struct JobMemory {
    /// Jobs that ended, by the cluster's id and the job's own
    /// ([`JobSpec::job_id`]).
    ended: HashSet<(JobId, String)>,
    /// The same, oldest first, to forget the oldest.
    ended_order: VecDeque<(JobId, String)>,
    /// Jobs whose session failed to open (or whose engine was lost), and
    /// when last.
    failed: HashMap<JobId, Instant>,
    /// Ended jobs the cluster offered again, and when last.
    offered_ended: HashMap<JobId, Instant>,
}

impl JobMemory {
    /// The job `job`, `job_id` by its own id, ended.
    fn ended(&mut self, job: JobId, job_id: &str) {
        let key = (job, job_id.to_owned());
        if self.ended.insert(key.clone()) {
            self.ended_order.push_back(key);
        }
        while self.ended_order.len() > ENDED_JOBS_KEPT {
            if let Some(oldest) = self.ended_order.pop_front() {
                self.ended.remove(&oldest);
            }
        }
        self.failed.remove(&job);
    }

    /// Whether `job`, `job_id` by its own id, ended here.
    fn is_ended(&self, job: JobId, job_id: &str) -> bool {
        self.ended.contains(&(job, job_id.to_owned()))
    }

    /// `job`'s session failed to open at `now`: declined for
    /// [`DECLINE_FOR`]. Returns whether it is the job's first failure
    /// within [`FAILURES_KEPT_FOR`] (to log).
    fn failed(&mut self, job: JobId, now: Instant) -> bool {
        self.forget_old(now);
        let first = self.failed.insert(job, now).is_none();
        keep_newest(&mut self.failed, DECLINES_KEPT);
        first
    }

    /// The cluster offered `job`, which ended here, at `now`: declined for
    /// [`DECLINE_FOR`]. Returns whether it was not declined already.
    fn offered_ended(&mut self, job: JobId, now: Instant) -> bool {
        self.forget_old(now);
        let first = self.offered_ended.insert(job, now).is_none();
        keep_newest(&mut self.offered_ended, DECLINES_KEPT);
        first
    }

    /// `job`'s session opened.
    fn opened(&mut self, job: JobId) {
        self.failed.remove(&job);
        self.offered_ended.remove(&job);
    }

    /// Whether `job` is declined at `now`.
    fn is_declined(&self, job: JobId, now: Instant) -> bool {
        let recent = |at: Option<&Instant>| at.is_some_and(|at| now.saturating_duration_since(*at) < DECLINE_FOR);
        recent(self.failed.get(&job)) || recent(self.offered_ended.get(&job))
    }

    /// The jobs declined at `now`, in order.
    fn declined(&mut self, now: Instant) -> Vec<JobId> {
        self.forget_old(now);
        let recent = self.failed.keys().chain(self.offered_ended.keys()).copied().filter(|job| self.is_declined(*job, now));
        let declined: BTreeSet<JobId> = recent.collect();
        declined.into_iter().collect()
    }

    /// Forgets failures older than [`FAILURES_KEPT_FOR`] and offers of
    /// ended jobs no longer declined.
    fn forget_old(&mut self, now: Instant) {
        self.failed.retain(|_, at| now.saturating_duration_since(*at) < FAILURES_KEPT_FOR);
        self.offered_ended.retain(|_, at| now.saturating_duration_since(*at) < DECLINE_FOR);
    }
}

/// Drops the oldest entries of `map` past `max`.
fn keep_newest(map: &mut HashMap<JobId, Instant>, max: usize) {
    while map.len() > max {
        let Some(oldest) = map.iter().min_by_key(|(_, at)| **at).map(|(job, _)| *job) else { return };
        map.remove(&oldest);
    }
}

/// Text a peer sent, as this worker's errors and logs show it.
fn peer_text(text: &str) -> String {
    excerpt(text, EXCERPT_CHARS)
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
        let Some(memory) = sessions.upgrade().map(|sessions| sessions.gauge().read()) else { return };
        let (over, why) = match job_link::send_heartbeat(&session.link, &session.activity, memory).await {
            Ok(None) => continue,
            Ok(Some(end)) => (true, describe_end(&end)),
            Err(lost) => (false, format!("lost the job: {lost}")),
        };
        if let Some(sessions) = sessions.upgrade() {
            match over {
                true => sessions.end(&session, &why),
                false => sessions.lost(&session, &why),
            }
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
        JobEnd::Failed(why) => format!("the job failed: {}", peer_text(why)),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_whose_session_failed_is_declined_for_a_while_and_logged_once() {
        let mut memory = JobMemory::default();
        let now = Instant::now();
        assert!(memory.failed(JobId(3), now), "the first failure is logged");
        assert!(memory.is_declined(JobId(3), now + Duration::from_secs(1)));
        assert_eq!(memory.declined(now + Duration::from_secs(1)), [JobId(3)]);
        // Offered again after the decline: tried, fails again, not logged again.
        let later = now + DECLINE_FOR;
        assert!(!memory.is_declined(JobId(3), later));
        assert!(memory.declined(later).is_empty());
        assert!(!memory.failed(JobId(3), later), "a failure again is not logged again");
        assert!(memory.is_declined(JobId(3), later));
        // Once it opens, it is no longer declined.
        memory.opened(JobId(3));
        assert!(!memory.is_declined(JobId(3), later));
        assert!(memory.declined(later).is_empty());
    }

    #[test]
    fn an_ended_job_still_offered_is_declined_for_a_while() {
        let mut memory = JobMemory::default();
        let now = Instant::now();
        memory.ended(JobId(1), "a");
        assert!(!memory.is_declined(JobId(1), now), "not until the cluster offers it");
        assert!(memory.offered_ended(JobId(1), now));
        assert!(!memory.offered_ended(JobId(1), now), "declined already");
        assert_eq!(memory.declined(now), [JobId(1)]);
        assert!(memory.declined(now + DECLINE_FOR).is_empty());
        assert!(memory.offered_ended.is_empty(), "forgotten once no longer declined");
    }

    #[test]
    fn ended_jobs_are_known_by_the_clusters_id_and_their_own() {
        let mut memory = JobMemory::default();
        memory.ended(JobId(1), "old");
        assert!(memory.is_ended(JobId(1), "old"));
        // A cluster restarted on a fresh state directory: job-1 again, another job.
        assert!(!memory.is_ended(JobId(1), "new"));
        for id in 0..ENDED_JOBS_KEPT as u64 {
            memory.ended(JobId(id + 2), "x");
        }
        assert!(!memory.is_ended(JobId(1), "old"), "the oldest is forgotten");
        assert!(memory.is_ended(JobId(2), "x"));
        assert_eq!((memory.ended.len(), memory.ended_order.len()), (ENDED_JOBS_KEPT, ENDED_JOBS_KEPT));
    }

    #[test]
    fn failures_are_forgotten_after_a_while_and_bounded_in_number() {
        let mut memory = JobMemory::default();
        let now = Instant::now();
        for id in 0..(DECLINES_KEPT as u64 + 10) {
            memory.failed(JobId(id), now + Duration::from_millis(id));
        }
        assert_eq!(memory.failed.len(), DECLINES_KEPT);
        assert!(!memory.failed.contains_key(&JobId(0)), "the oldest go first");
        let much_later = now + FAILURES_KEPT_FOR + Duration::from_secs(1);
        assert!(memory.declined(much_later).is_empty());
        assert!(memory.failed.is_empty(), "failures older than a minute are forgotten");
        assert!(memory.failed(JobId(0), much_later), "and logged again if they come back");
    }

    #[test]
    fn how_a_job_failed_is_logged_escaped() {
        let why = describe_end(&JobEnd::Failed("boom\n2024-01-01 INFO forged line\u{1b}[31m".into()));
        assert!(!why.chars().any(char::is_control), "{why:?}");
        assert!(why.starts_with("the job failed: boom"), "{why}");
    }
}
