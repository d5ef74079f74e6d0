//! The standing cluster's job history: every job submitted to
//! `mr-master --serve`, in SQLite at `<state-dir>/history.sqlite`.
//!
//! The history gives each job its id and records its life: `queued`, then
//! `running`, then `succeeded`, `failed` or `cancelled` (a queued job may
//! also end without running). It answers what the cluster asks of it: a job
//! or a list of them (the status API), the unfinished jobs to take up again
//! at a restart (running ones resume from their journals, see
//! [`journal`](crate::journal)), which job holds an output directory (for
//! admission), and which finished jobs to prune. A job's spec, counters and
//! attempt summary are JSON text that the caller writes and reads; the
//! history stores it and never looks inside.
//!
//! - **One coordinator at a time.** [`History::open`] takes an exclusive
//!   `flock` on `<state-dir>/lock` without waiting, held as long as the
//!   `History` lives and released by the kernel however the process dies, as
//!   a worker does for its [`work_dir`](crate::work_dir). A second opener is
//!   refused with [`HistoryError::Busy`].
//! - **Ids are never given twice**, even after pruning: `AUTOINCREMENT`
//!   keeps the highest id ever given in `sqlite_sequence`, beside the rows.
//! - **Each write is one transaction,** so a coordinator killed during or
//!   between calls leaves the database as its last commit left it. The
//!   journal is WAL with `synchronous=FULL`: a commit is on disk before the
//!   call returns. `NORMAL` would survive a SIGKILL as well (committed pages
//!   are in the kernel's cache), but a power loss could roll back the last
//!   commits, and with them a submission already acknowledged and the id
//!   counter, so that the id would be given to another job. The history is
//!   written a few times per job, so FULL's fsync per commit costs nothing
//!   that matters.
//! - **The schema's version** is `PRAGMA user_version` ([`SCHEMA_VERSION`];
//!   0 is a new, empty file). A file of a newer version, written by a newer
//!   mr-master, is refused ([`HistoryError::NewerSchema`]), never read as if
//!   it were ours.
//! - **Nothing read from the file is trusted:** a value the schema does not
//!   allow (an unknown state, a time that is not a count of milliseconds) is
//!   [`HistoryError::Corrupt`], never a panic.
//!
//! Every call blocks on the file (a commit waits for an fsync): an async
//! caller makes them on a blocking thread, or accepts a few milliseconds per
//! job.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, Value};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Params, Row, Transaction, TransactionBehavior};

use crate::work_dir::try_lock;

/// The database's file name in the state directory.
pub const DATABASE: &str = "history.sqlite";
/// The lock's file name in the state directory; whoever holds it owns the
/// whole state directory.
pub const LOCK: &str = "lock";
/// The schema this code reads and writes, as `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;
/// How long a statement waits for a lock SQLite holds elsewhere (a person's
/// `sqlite3` reading the file) before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Version 1. Times are Unix milliseconds; a phase's time is seconds. The
/// state's names are [`JobState::as_str`]'s: a new state is a new version.
const SCHEMA: &str = "
CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    spec              TEXT    NOT NULL,
    output_dir        TEXT    NOT NULL,
    priority          TEXT    NOT NULL,
    state             TEXT    NOT NULL
                      CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    submitted_ms      INTEGER NOT NULL,
    started_ms        INTEGER,
    ended_ms          INTEGER,
    error             TEXT,
    counters          TEXT,
    map_phase_secs    REAL,
    reduce_phase_secs REAL,
    attempts          TEXT
);
CREATE INDEX jobs_by_state ON jobs (state);
CREATE INDEX jobs_by_output_dir ON jobs (output_dir);
";

/// The columns a [`JobRecord`] is read from (by name).
const RECORD_COLUMNS: &str =
    "id, spec, output_dir, priority, state, submitted_ms, started_ms, ended_ms, error, counters, map_phase_secs, reduce_phase_secs, attempts";

/// Why the history could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Another `History` (another `mr-master --serve`) holds the state
    /// directory's lock.
    #[error("another mr-master --serve is using the state directory {} (it holds {})", .state_dir.display(), .lock.display())]
    Busy {
        /// The state directory.
        state_dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// A file operation on the state directory failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// What was being worked on.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// SQLite failed (the disk, a file that is not a database, a lock held
    /// past [`BUSY_TIMEOUT`]).
    #[error("job history {}: {source}", .path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The failure.
        source: rusqlite::Error,
    },
    /// The file was written by a newer mr-master, with a schema this one
    /// does not know.
    #[error(
        "job history {} has schema version {found}, newer than this mr-master's {supported}: run the newer mr-master, or move the file aside",
        .path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The version this code writes.
        supported: i64,
    },
    /// A value in the file that the schema does not allow.
    #[error("job history {}: {what} is corrupt: {detail}", .path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which value ("job 7's state").
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No job has this id (never submitted, or pruned).
    #[error("no job {id} in the history")]
    NoSuchJob {
        /// The id asked for.
        id: u64,
    },
    /// A job was said to have ended in a state that is not final.
    #[error("job {id} cannot end as {state}: a job ends succeeded, failed or cancelled")]
    NotFinal {
        /// The job.
        id: u64,
        /// The state given.
        state: JobState,
    },
    /// A change of state the job's life does not allow (it has ended
    /// already, or starts twice).
    #[error("job {id} is {from}: it cannot become {to}")]
    Transition {
        /// The job.
        id: u64,
        /// Its state in the history.
        from: JobState,
        /// The state asked for.
        to: JobState,
    },
    /// An output directory whose path is not UTF-8 (the history stores
    /// paths as text).
    #[error("output directory {} is not UTF-8", .path.display())]
    PathNotUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A time before 1970, or too far ahead to count in milliseconds.
    #[error("the time {time:?} cannot be stored as Unix milliseconds")]
    TimeOutOfRange {
        /// The time given.
        time: SystemTime,
    },
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Submitted; waiting for the queue to run it.
    Queued,
    /// Its tasks are being run.
    Running,
    /// Every output is published.
    Succeeded,
    /// It ended without its outputs.
    Failed,
    /// Someone cancelled it.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [JobState; 5] = [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled];

    /// The state's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job is over: nothing changes it any more.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// Whether a job in this state may go to `to`: queued to running, and
    /// either of them to a final state.
    pub fn may_become(self, to: JobState) -> bool {
        match self {
            JobState::Queued => to == JobState::Running || to.is_final(),
            JobState::Running => to.is_final(),
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => false,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no [`JobState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job state {0:?}")]
pub struct UnknownJobState(pub String);

impl FromStr for JobState {
    type Err = UnknownJobState;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        JobState::ALL.into_iter().find(|state| state.as_str() == name).ok_or_else(|| UnknownJobState(name.to_owned()))
    }
}

/// How a job ended, for [`History::ended`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    /// Succeeded, failed or cancelled.
    pub state: JobState,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Its counters, as JSON (none for a job that never ran).
    pub counters_json: Option<String>,
    /// Seconds its map phase took (none if it never ended). SQLite has no
    /// NaN: a time that is not finite is stored as none.
    pub map_phase_secs: Option<f64>,
    /// Seconds its reduce phase took (none if it never ended); as
    /// `map_phase_secs`.
    pub reduce_phase_secs: Option<f64>,
    /// Its attempts in summary, as JSON.
    pub attempts_json: Option<String>,
}

/// A job as the history has it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Its id, given by [`History::submit`].
    pub id: u64,
    /// Its spec, as the caller wrote it.
    pub spec_json: String,
    /// Its output directory, as the caller gave it: canonical if the caller
    /// made it so, since [`History::output_dir_holder`] compares the text.
    pub output_dir: PathBuf,
    /// Its priority, as the caller named it (the cross-job queue's level).
    pub priority: String,
    /// Where it is in its life.
    pub state: JobState,
    /// When it was submitted. Every time in the history is kept to the
    /// millisecond.
    pub submitted: SystemTime,
    /// When it started running; set once it has.
    pub started: Option<SystemTime>,
    /// When it ended; set when `state` is final.
    pub ended: Option<SystemTime>,
    /// How it ended, as [`History::ended`] was told (its `state` is
    /// `state`); set exactly when `state` is final.
    pub outcome: Option<JobOutcome>,
}

/// Which jobs [`History::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in one of these states; all jobs if none.
    pub states: Option<Vec<JobState>>,
    /// At most this many (the newest); all if none.
    pub limit: Option<usize>,
}

/// The job history of one state directory, open and locked.
#[derive(Debug)]
pub struct History {
    /// Declared before `_lock`, so that the database is closed before the
    /// lock is released.
    connection: Connection,
    /// The database file, for errors.
    path: PathBuf,
    /// Held for the lock; closing it releases the lock.
    _lock: File,
}

impl History {
    /// Opens `<state_dir>/history.sqlite`, making the directory and the
    /// file if they are missing, after locking the directory.
    pub fn open(state_dir: &Path) -> Result<History, HistoryError> {
        std::fs::create_dir_all(state_dir).map_err(|source| HistoryError::Io { path: state_dir.to_owned(), source })?;
        let lock = lock_state_dir(state_dir)?;
        let path = state_dir.join(DATABASE);
        let connection = open_database(&path)?;
        Ok(History { connection, path, _lock: lock })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a new job, queued, and returns its id.
    pub fn submit(&mut self, spec_json: &str, output_dir: &Path, priority: &str, now: SystemTime) -> Result<u64, HistoryError> {
        let output_dir = path_text(output_dir)?;
        let submitted_ms = unix_millis(now)?;
        let id = self
            .connection
            .query_row(
                "INSERT INTO jobs (spec, output_dir, priority, state, submitted_ms) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![spec_json, output_dir, priority, JobState::Queued.as_str(), submitted_ms],
                |row| row.get(0),
            )
            .map_err(sqlite(&self.path))?;
        job_id(&self.path, id, "the id SQLite gave")
    }

    /// Replaces queued job `id`'s spec: a job that waited for another's
    /// output has its inputs now (see [`crate::cluster::steps`]). A job
    /// that is not queued keeps the spec it ran with.
    pub fn respecify(&mut self, id: u64, spec_json: &str) -> Result<(), HistoryError> {
        let row_id = i64::try_from(id).map_err(|_| HistoryError::NoSuchJob { id })?;
        let changed = self
            .connection
            .execute("UPDATE jobs SET spec = ?2 WHERE id = ?1 AND state = ?3", params![row_id, spec_json, JobState::Queued.as_str()])
            .map_err(sqlite(&self.path))?;
        match changed {
            1 => Ok(()),
            _ => match self.get(id)? {
                None => Err(HistoryError::NoSuchJob { id }),
                Some(record) => Err(HistoryError::Transition { id, from: record.state, to: JobState::Queued }),
            },
        }
    }

    /// Records that queued job `id` started running. (A running job taken
    /// up again at a restart is running still: it is not started again.)
    pub fn started(&mut self, id: u64, now: SystemTime) -> Result<(), HistoryError> {
        let started_ms = unix_millis(now)?;
        self.transition(id, JobState::Running, |tx, row_id| {
            tx.execute("UPDATE jobs SET state = ?2, started_ms = ?3 WHERE id = ?1", params![row_id, JobState::Running.as_str(), started_ms])
        })
    }

    /// Records how job `id`, queued or running, ended.
    pub fn ended(&mut self, id: u64, outcome: JobOutcome, now: SystemTime) -> Result<(), HistoryError> {
        if !outcome.state.is_final() {
            return Err(HistoryError::NotFinal { id, state: outcome.state });
        }
        let ended_ms = unix_millis(now)?;
        let finite = |seconds: Option<f64>| seconds.filter(|s| s.is_finite());
        self.transition(id, outcome.state, |tx, row_id| {
            tx.execute(
                "UPDATE jobs SET state = ?2, ended_ms = ?3, error = ?4, counters = ?5, map_phase_secs = ?6, reduce_phase_secs = ?7, attempts = ?8
                 WHERE id = ?1",
                params![
                    row_id,
                    outcome.state.as_str(),
                    ended_ms,
                    outcome.error,
                    outcome.counters_json,
                    finite(outcome.map_phase_secs),
                    finite(outcome.reduce_phase_secs),
                    outcome.attempts_json,
                ],
            )
        })
    }

    /// Job `id`, if the history has it.
    pub fn get(&self, id: u64) -> Result<Option<JobRecord>, HistoryError> {
        let Ok(row_id) = i64::try_from(id) else { return Ok(None) };
        let mut found = self.records(&format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?1"), params![row_id])?;
        Ok(found.pop())
    }

    /// The jobs `filter` selects, newest (last submitted) first.
    pub fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, HistoryError> {
        let mut values = Vec::new();
        let mut sql = format!("SELECT {RECORD_COLUMNS} FROM jobs");
        if let Some(states) = &filter.states {
            sql.push_str(&format!(" WHERE state IN ({})", vec!["?"; states.len()].join(", ")));
            values.extend(states.iter().map(|state| Value::Text(state.as_str().to_owned())));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        values.push(Value::Integer(sql_limit(filter.limit)));
        self.records(&sql, params_from_iter(values))
    }

    /// The queued and running jobs, oldest first: what a restarted
    /// coordinator takes up again.
    pub fn unfinished(&self) -> Result<Vec<JobRecord>, HistoryError> {
        self.records(
            &format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE state IN (?1, ?2) ORDER BY id"),
            params![JobState::Queued.as_str(), JobState::Running.as_str()],
        )
    }

    /// The job whose output directory `dir` is, if one still holds it:
    /// queued, running, or succeeded with its outputs there (until it is
    /// pruned). A failed or cancelled job leaves nothing there (a job
    /// directory publishes all or nothing), so it holds nothing. Paths are
    /// compared as given: the caller canonicalizes. Should several hold it,
    /// an unfinished one is named before a succeeded one.
    pub fn output_dir_holder(&self, dir: &Path) -> Result<Option<(u64, JobState)>, HistoryError> {
        let dir = path_text(dir)?;
        let holder = self
            .connection
            .query_row(
                "SELECT id, state FROM jobs WHERE output_dir = ?1 AND state IN (?2, ?3, ?4) ORDER BY state = ?4, id DESC LIMIT 1",
                params![dir, JobState::Queued.as_str(), JobState::Running.as_str(), JobState::Succeeded.as_str()],
                // An INTEGER PRIMARY KEY is always an integer; the state may
                // be anything.
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Value>(1)?)),
            )
            .optional()
            .map_err(sqlite(&self.path))?;
        let Some((id, state)) = holder else { return Ok(None) };
        let id = job_id(&self.path, id, "a holder's id")?;
        Ok(Some((id, decode_state(&self.path, state, id)?)))
    }

    /// Removes finished jobs: those beyond the newest `keep_last` finished
    /// ones (by when they ended), and those that ended before
    /// `now - older_than`. Queued and running jobs are never removed; with
    /// neither limit, nothing is. Returns how many were removed.
    pub fn prune(&mut self, keep_last: Option<usize>, older_than: Option<Duration>, now: SystemTime) -> Result<usize, HistoryError> {
        if keep_last.is_none() && older_than.is_none() {
            return Ok(0);
        }
        // A NULL cutoff compares as unknown, so no job is older than none.
        let cutoff_ms = match older_than {
            Some(age) => Some(unix_millis(now)?.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))),
            None => None,
        };
        let [succeeded, failed, cancelled] = [JobState::Succeeded, JobState::Failed, JobState::Cancelled].map(JobState::as_str);
        // One statement, so one transaction. A limit of -1 (no `keep_last`)
        // is SQLite's "no limit": every finished job is among the kept.
        self.connection
            .execute(
                "DELETE FROM jobs WHERE state IN (?1, ?2, ?3) AND (
                     id NOT IN (SELECT id FROM jobs WHERE state IN (?1, ?2, ?3) ORDER BY ended_ms DESC, id DESC LIMIT ?4)
                     OR ended_ms < ?5
                 )",
                params![succeeded, failed, cancelled, sql_limit(keep_last), cutoff_ms],
            )
            .map_err(sqlite(&self.path))
    }

    /// Moves job `id` to `to` in one transaction, if its state allows it,
    /// with `update` writing the new row (given its SQLite id).
    fn transition(
        &mut self,
        id: u64,
        to: JobState,
        update: impl FnOnce(&Transaction<'_>, i64) -> rusqlite::Result<usize>,
    ) -> Result<(), HistoryError> {
        let History { connection, path, .. } = self;
        let row_id = i64::try_from(id).map_err(|_| HistoryError::NoSuchJob { id })?;
        // Immediate: the write lock is taken before the state is read, so
        // nothing can change the row between the check and the update.
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite(path))?;
        let state = tx
            .query_row("SELECT state FROM jobs WHERE id = ?1", params![row_id], |row| row.get::<_, Value>(0))
            .optional()
            .map_err(sqlite(path))?
            .ok_or(HistoryError::NoSuchJob { id })?;
        let from = decode_state(path, state, id)?;
        if !JobState::may_become(from, to) {
            return Err(HistoryError::Transition { id, from, to });
        }
        update(&tx, row_id).map_err(sqlite(path))?;
        tx.commit().map_err(sqlite(path))
    }

    /// Runs a query of [`RECORD_COLUMNS`] and reads each row it returns.
    fn records(&self, sql: &str, params: impl Params) -> Result<Vec<JobRecord>, HistoryError> {
        let mut statement = self.connection.prepare(sql).map_err(sqlite(&self.path))?;
        let mut rows = statement.query(params).map_err(sqlite(&self.path))?;
        let mut records = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite(&self.path))? {
            records.push(self.read_record(row)?);
        }
        Ok(records)
    }

    /// A row of [`RECORD_COLUMNS`] as a record; any value out of the
    /// schema is [`HistoryError::Corrupt`].
    fn read_record(&self, row: &Row<'_>) -> Result<JobRecord, HistoryError> {
        let id = row.get("id").map_err(|e| corrupt(&self.path, "a job's id".to_owned(), e.to_string()))?;
        let id = job_id(&self.path, id, "a job's id")?;
        let state = decode_state(&self.path, self.column(row, id, "state")?, id)?;
        let outcome = if state.is_final() {
            Some(JobOutcome {
                state,
                error: self.column(row, id, "error")?,
                counters_json: self.column(row, id, "counters")?,
                map_phase_secs: self.column(row, id, "map_phase_secs")?,
                reduce_phase_secs: self.column(row, id, "reduce_phase_secs")?,
                attempts_json: self.column(row, id, "attempts")?,
            })
        } else {
            None
        };
        let submitted = self.time(row, id, "submitted_ms")?;
        Ok(JobRecord {
            id,
            spec_json: self.column(row, id, "spec")?,
            output_dir: PathBuf::from(self.column::<String>(row, id, "output_dir")?),
            priority: self.column(row, id, "priority")?,
            state,
            submitted: submitted.ok_or_else(|| corrupt(&self.path, format!("job {id}'s submitted_ms"), "it is missing".to_owned()))?,
            started: self.time(row, id, "started_ms")?,
            ended: self.time(row, id, "ended_ms")?,
            outcome,
        })
    }

    /// `column` of job `id`'s `row` as a `T`; [`HistoryError::Corrupt`] if
    /// it is not one.
    fn column<T: FromSql>(&self, row: &Row<'_>, id: u64, column: &str) -> Result<T, HistoryError> {
        row.get(column).map_err(|e| corrupt(&self.path, format!("job {id}'s {column}"), e.to_string()))
    }

    /// A time `column` of job `id`'s `row`, in Unix milliseconds.
    fn time(&self, row: &Row<'_>, id: u64, column: &str) -> Result<Option<SystemTime>, HistoryError> {
        let Some(ms) = self.column::<Option<i64>>(row, id, column)? else { return Ok(None) };
        let time = u64::try_from(ms).ok().and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
        time.map(Some).ok_or_else(|| corrupt(&self.path, format!("job {id}'s {column}"), format!("{ms} is no time since 1970")))
    }
}

/// A value read from the database at `path` as a `T`;
/// [`HistoryError::Corrupt`] naming `what` if it is not one.
fn decode<T: FromSql>(path: &Path, value: Value, what: &str) -> Result<T, HistoryError> {
    T::column_result((&value).into()).map_err(|e| corrupt(path, what.to_owned(), e.to_string()))
}

/// A job's id from SQLite's (which `AUTOINCREMENT` makes positive).
fn job_id(path: &Path, row_id: i64, what: &str) -> Result<u64, HistoryError> {
    u64::try_from(row_id).map_err(|_| corrupt(path, what.to_owned(), format!("{row_id} is no job id")))
}

/// Job `id`'s state, from the value stored for it.
fn decode_state(path: &Path, value: Value, id: u64) -> Result<JobState, HistoryError> {
    let what = format!("job {id}'s state");
    let name: String = decode(path, value, &what)?;
    name.parse().map_err(|e: UnknownJobState| corrupt(path, what, e.to_string()))
}

/// Takes the state directory's lock, without waiting.
fn lock_state_dir(state_dir: &Path) -> Result<File, HistoryError> {
    let path = state_dir.join(LOCK);
    let file = File::options().create(true).truncate(false).write(true).open(&path);
    let file = file.map_err(|source| HistoryError::Io { path: path.clone(), source })?;
    match try_lock(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(HistoryError::Busy { state_dir: state_dir.to_owned(), lock: path }),
        Err(source) => Err(HistoryError::Io { path, source }),
    }
}

/// Opens the database at `path` with this module's settings, and makes or
/// checks its schema.
fn open_database(path: &Path) -> Result<Connection, HistoryError> {
    let mut connection = Connection::open(path).map_err(sqlite(path))?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(sqlite(path))?;
    let mode: String = connection.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0)).map_err(sqlite(path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Transactions are as safe in SQLite's other journals; WAL only
        // saves writes. A filesystem without shared memory refuses it.
        tracing::warn!("job history {}: journal mode is {mode}, not WAL", path.display());
    }
    connection.pragma_update(None, "synchronous", "FULL").map_err(sqlite(path))?;
    ensure_schema(&mut connection, path)?;
    Ok(connection)
}

/// Makes the schema in a new file; checks the version of an old one.
fn ensure_schema(connection: &mut Connection, path: &Path) -> Result<(), HistoryError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite(path))?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(sqlite(path))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA).map_err(sqlite(path))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sqlite(path))?;
            tx.commit().map_err(sqlite(path))
        }
        SCHEMA_VERSION => Ok(()),
        found if found > SCHEMA_VERSION => Err(HistoryError::NewerSchema { path: path.to_owned(), found, supported: SCHEMA_VERSION }),
        found => Err(corrupt(path, "the schema version".to_owned(), format!("{found} is no version"))),
    }
}

/// The error maker for SQLite failures on the database at `path`.
fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> HistoryError + '_ {
    move |source| HistoryError::Sqlite { path: path.to_owned(), source }
}

fn corrupt(path: &Path, what: String, detail: String) -> HistoryError {
    HistoryError::Corrupt { path: path.to_owned(), what, detail }
}

/// `path` as the text the history stores.
fn path_text(path: &Path) -> Result<&str, HistoryError> {
    path.to_str().ok_or_else(|| HistoryError::PathNotUtf8 { path: path.to_owned() })
}

/// `time` as Unix milliseconds.
fn unix_millis(time: SystemTime) -> Result<i64, HistoryError> {
    let since_1970 = time.duration_since(UNIX_EPOCH).ok();
    since_1970.and_then(|d| i64::try_from(d.as_millis()).ok()).ok_or(HistoryError::TimeOutOfRange { time })
}

/// A `LIMIT` for at most `limit` rows; -1, SQLite's "no limit", for none.
fn sql_limit(limit: Option<usize>) -> i64 {
    limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ms` after 1970.
    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn open(dir: &tempfile::TempDir) -> History {
        History::open(dir.path()).unwrap_or_else(|e| panic!("opening the history in {}: {e}", dir.path().display()))
    }

    /// A history in a fresh state directory, which lives as long as the
    /// directory it returns.
    fn new_history() -> (tempfile::TempDir, History) {
        let dir = tempfile::tempdir().unwrap();
        let history = open(&dir);
        (dir, history)
    }

    fn outcome(state: JobState) -> JobOutcome {
        JobOutcome { state, error: None, counters_json: None, map_phase_secs: None, reduce_phase_secs: None, attempts_json: None }
    }

    /// A job submitted and started at `submitted_ms`, on `dir`, ended as
    /// `state` at `ended_ms`.
    fn finished(history: &mut History, dir: &str, state: JobState, submitted_ms: u64, ended_ms: u64) -> u64 {
        let id = started_job(history, dir, submitted_ms);
        history.ended(id, outcome(state), at(ended_ms)).unwrap();
        id
    }

    /// A job submitted and started at `ms`, on `dir`.
    fn started_job(history: &mut History, dir: &str, ms: u64) -> u64 {
        let id = history.submit("{}", Path::new(dir), "normal", at(ms)).unwrap();
        history.started(id, at(ms)).unwrap();
        id
    }

    fn ids(records: &[JobRecord]) -> Vec<u64> {
        records.iter().map(|r| r.id).collect()
    }

    /// `id` as SQLite has it, for statements that damage the file.
    fn row_id(id: u64) -> i64 {
        i64::try_from(id).unwrap()
    }

    fn all_ids(history: &History) -> Vec<u64> {
        ids(&history.list(&JobFilter::default()).unwrap())
    }

    #[test]
    fn every_field_round_trips_through_a_jobs_life() {
        let (_dir, mut history) = new_history();
        let spec = r#"{"app":"wordcount","inputs":["a b"],"reduces":3}"#;
        let id = history.submit(spec, Path::new("/data/out é"), "high", at(1_700_000_000_123)).unwrap();
        let mut expected = JobRecord {
            id,
            spec_json: spec.to_owned(),
            output_dir: PathBuf::from("/data/out é"),
            priority: "high".to_owned(),
            state: JobState::Queued,
            submitted: at(1_700_000_000_123),
            started: None,
            ended: None,
            outcome: None,
        };
        assert_eq!(history.get(id).unwrap(), Some(expected.clone()));

        history.started(id, at(1_700_000_001_456)).unwrap();
        expected.state = JobState::Running;
        expected.started = Some(at(1_700_000_001_456));
        assert_eq!(history.get(id).unwrap(), Some(expected.clone()));

        let ending = JobOutcome {
            state: JobState::Failed,
            error: Some("map task 3 failed 4 times: 'quoted' \"text\"\n".to_owned()),
            counters_json: Some(r#"{"map_input_records":10}"#.to_owned()),
            map_phase_secs: Some(12.25),
            reduce_phase_secs: Some(0.1),
            attempts_json: Some(r#"[{"task":"m3","attempts":4}]"#.to_owned()),
        };
        history.ended(id, ending.clone(), at(1_700_000_009_789)).unwrap();
        expected.state = JobState::Failed;
        expected.ended = Some(at(1_700_000_009_789));
        expected.outcome = Some(ending);
        assert_eq!(history.get(id).unwrap(), Some(expected));
        assert_eq!(history.get(id + 1).unwrap(), None);
    }

    #[test]
    fn only_a_queued_job_is_respecified() {
        let (_dir, mut history) = new_history();
        let id = history.submit("{\"inputs\":[]}", Path::new("/out"), "normal", at(1)).unwrap();
        history.respecify(id, "{\"inputs\":[\"/a\"]}").unwrap();
        assert_eq!(history.get(id).unwrap().unwrap().spec_json, "{\"inputs\":[\"/a\"]}");
        history.started(id, at(2)).unwrap();
        let refused = history.respecify(id, "{}").unwrap_err();
        assert!(matches!(refused, HistoryError::Transition { from: JobState::Running, .. }), "{refused}");
        assert_eq!(history.get(id).unwrap().unwrap().spec_json, "{\"inputs\":[\"/a\"]}");
        assert!(matches!(history.respecify(id + 1, "{}"), Err(HistoryError::NoSuchJob { .. })));
    }

    #[test]
    fn a_phase_time_that_is_not_finite_is_stored_as_none() {
        let (_dir, mut history) = new_history();
        let id = history.submit("{}", Path::new("/out"), "low", at(1)).unwrap();
        let ending = JobOutcome { map_phase_secs: Some(f64::NAN), reduce_phase_secs: Some(f64::INFINITY), ..outcome(JobState::Cancelled) };
        history.ended(id, ending, at(2)).unwrap();
        let record = history.get(id).unwrap().unwrap();
        assert_eq!(record.started, None);
        assert_eq!(record.outcome, Some(outcome(JobState::Cancelled)));
    }

    #[test]
    fn every_state_round_trips_through_its_name() {
        for state in JobState::ALL {
            assert_eq!(state.to_string().parse::<JobState>(), Ok(state));
        }
        assert_eq!("Queued".parse::<JobState>(), Err(UnknownJobState("Queued".to_owned())));
        assert_eq!("".parse::<JobState>(), Err(UnknownJobState(String::new())));
    }

    #[test]
    fn only_the_lives_transitions_are_allowed() {
        let (_dir, mut history) = new_history();
        let id = history.submit("{}", Path::new("/out"), "normal", at(1)).unwrap();
        let refused = history.ended(id, outcome(JobState::Running), at(2)).unwrap_err();
        assert!(matches!(refused, HistoryError::NotFinal { id: i, state: JobState::Running } if i == id), "{refused}");
        let refused = history.ended(id, outcome(JobState::Queued), at(2)).unwrap_err();
        assert!(matches!(refused, HistoryError::NotFinal { .. }), "{refused}");

        history.started(id, at(2)).unwrap();
        let refused = history.started(id, at(3)).unwrap_err();
        assert!(matches!(refused, HistoryError::Transition { from: JobState::Running, to: JobState::Running, .. }), "{refused}");

        history.ended(id, outcome(JobState::Succeeded), at(4)).unwrap();
        let before = history.get(id).unwrap();
        let refused = history.ended(id, outcome(JobState::Failed), at(5)).unwrap_err();
        assert!(matches!(refused, HistoryError::Transition { from: JobState::Succeeded, to: JobState::Failed, .. }), "{refused}");
        let refused = history.started(id, at(5)).unwrap_err();
        assert!(matches!(refused, HistoryError::Transition { from: JobState::Succeeded, to: JobState::Running, .. }), "{refused}");
        assert_eq!(history.get(id).unwrap(), before, "a refused change leaves the job as it was");

        // A queued job may be cancelled without running.
        let queued = history.submit("{}", Path::new("/out"), "normal", at(6)).unwrap();
        history.ended(queued, outcome(JobState::Cancelled), at(7)).unwrap();

        let missing = history.started(999, at(8)).unwrap_err();
        assert!(matches!(missing, HistoryError::NoSuchJob { id: 999 }), "{missing}");
        let missing = history.ended(999, outcome(JobState::Failed), at(8)).unwrap_err();
        assert!(matches!(missing, HistoryError::NoSuchJob { id: 999 }), "{missing}");
    }

    #[test]
    fn list_filters_by_state_and_limit_newest_first() {
        let (_dir, mut history) = new_history();
        let done = finished(&mut history, "/a", JobState::Succeeded, 1, 2);
        let failed = finished(&mut history, "/b", JobState::Failed, 3, 4);
        let queued = history.submit("{}", Path::new("/c"), "low", at(5)).unwrap();
        let running = started_job(&mut history, "/d", 6);

        assert_eq!(all_ids(&history), vec![running, queued, failed, done]);
        let limited = history.list(&JobFilter { states: None, limit: Some(2) }).unwrap();
        assert_eq!(ids(&limited), vec![running, queued]);
        let finished_only = JobFilter { states: Some(vec![JobState::Succeeded, JobState::Failed]), limit: None };
        assert_eq!(ids(&history.list(&finished_only).unwrap()), vec![failed, done]);
        let one_running = JobFilter { states: Some(vec![JobState::Running]), limit: Some(5) };
        assert_eq!(ids(&history.list(&one_running).unwrap()), vec![running]);
        assert_eq!(history.list(&JobFilter { states: Some(vec![]), limit: None }).unwrap(), vec![]);
        assert_eq!(history.list(&JobFilter { states: None, limit: Some(0) }).unwrap(), vec![]);

        assert_eq!(ids(&history.unfinished().unwrap()), vec![queued, running], "oldest first");
    }

    #[test]
    fn ids_are_never_given_again_after_pruning_or_reopening() {
        let (dir, mut history) = new_history();
        let last = (0..3).map(|i| finished(&mut history, "/out", JobState::Succeeded, i, i + 1)).last().unwrap();
        assert_eq!(history.prune(Some(0), None, at(10)).unwrap(), 3);
        assert_eq!(all_ids(&history), Vec::<u64>::new());
        let next = history.submit("{}", Path::new("/out"), "normal", at(11)).unwrap();
        assert!(next > last, "id {next} given after {last} was pruned");
        history.ended(next, outcome(JobState::Cancelled), at(12)).unwrap();
        assert_eq!(history.prune(Some(0), None, at(13)).unwrap(), 1);
        drop(history);

        let mut history = open(&dir);
        let after_reopen = history.submit("{}", Path::new("/out"), "normal", at(14)).unwrap();
        assert!(after_reopen > next, "id {after_reopen} given after {next} was pruned and the history reopened");
    }

    #[test]
    fn pruning_by_count_keeps_the_newest_finished_and_every_unfinished_job() {
        let (_dir, mut history) = new_history();
        let queued = history.submit("{}", Path::new("/q"), "normal", at(0)).unwrap();
        let running = started_job(&mut history, "/r", 0);
        // Submitted in one order, ended in another: "newest" is by end.
        let ends = [(JobState::Succeeded, 10, 100), (JobState::Failed, 20, 30), (JobState::Cancelled, 30, 50)];
        let [ended_last, _ended_first, ended_second] = ends.map(|(state, submitted, ended)| finished(&mut history, "/a", state, submitted, ended));

        assert_eq!(history.prune(None, None, at(1_000)).unwrap(), 0, "no limit, nothing pruned");
        assert_eq!(history.prune(Some(5), None, at(1_000)).unwrap(), 0);
        assert_eq!(history.prune(Some(2), None, at(1_000)).unwrap(), 1);
        assert_eq!(all_ids(&history), vec![ended_second, ended_last, running, queued]);
        assert_eq!(history.prune(Some(0), None, at(1_000)).unwrap(), 2);
        assert_eq!(all_ids(&history), vec![running, queued]);
    }

    #[test]
    fn pruning_by_age_keeps_recent_finished_and_every_unfinished_job() {
        let (_dir, mut history) = new_history();
        let minute = 60_000;
        let old_queued = history.submit("{}", Path::new("/q"), "normal", at(0)).unwrap();
        let old_running = started_job(&mut history, "/r", 0);
        let _ended_long_ago = finished(&mut history, "/a", JobState::Succeeded, 0, 10 * minute);
        let ended_just_now = finished(&mut history, "/b", JobState::Failed, 0, 19 * minute);
        let ended_at_the_cutoff = finished(&mut history, "/c", JobState::Succeeded, 0, 15 * minute);

        let now = at(20 * minute);
        assert_eq!(history.prune(None, Some(Duration::from_secs(5 * 60)), now).unwrap(), 1);
        assert_eq!(all_ids(&history), vec![ended_at_the_cutoff, ended_just_now, old_running, old_queued]);
        // An age beyond 1970 removes nothing.
        assert_eq!(history.prune(None, Some(Duration::from_secs(u64::MAX)), now).unwrap(), 0);
        // Both limits: a job goes if either says so.
        assert_eq!(history.prune(Some(1), Some(Duration::from_secs(60 * 60)), now).unwrap(), 1);
        assert_eq!(all_ids(&history), vec![ended_just_now, old_running, old_queued]);
    }

    #[test]
    fn the_lock_refuses_a_second_opener_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(&dir);
        match History::open(dir.path()) {
            Err(HistoryError::Busy { state_dir, lock }) => {
                assert_eq!(state_dir, dir.path());
                assert_eq!(lock, dir.path().join(LOCK));
            }
            other => panic!("a second opener of {} got {other:?}", dir.path().display()),
        }
        let message = History::open(dir.path()).unwrap_err().to_string();
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
        drop(first);
        open(&dir);
    }

    #[test]
    fn a_reopened_history_has_everything() {
        let (dir, mut history) = new_history();
        let done = finished(&mut history, "/a", JobState::Succeeded, 1, 2);
        let running = history.submit(r#"{"n":1}"#, Path::new("/b"), "high", at(3)).unwrap();
        history.started(running, at(4)).unwrap();
        history.submit("{}", Path::new("/c"), "low", at(5)).unwrap();
        let before = history.list(&JobFilter::default()).unwrap();
        drop(history);

        let history = open(&dir);
        assert_eq!(history.list(&JobFilter::default()).unwrap(), before);
        assert_eq!(history.output_dir_holder(Path::new("/a")).unwrap(), Some((done, JobState::Succeeded)));
        assert_eq!(ids(&history.unfinished().unwrap()), vec![running, running + 1]);
    }

    #[test]
    fn a_newer_schema_is_refused_naming_the_file_and_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(&dir));
        let path = dir.path().join(DATABASE);
        Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        match History::open(dir.path()) {
            Err(e @ HistoryError::NewerSchema { .. }) => {
                let message = e.to_string();
                assert!(matches!(&e, HistoryError::NewerSchema { path: p, found: 2, supported: 1 } if *p == path), "{e:?}");
                assert!(message.contains(&path.display().to_string()) && message.contains('2') && message.contains('1'), "{message}");
            }
            other => panic!("a newer schema in {} was opened: {other:?}", path.display()),
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE);
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        match History::open(dir.path()) {
            Err(e @ HistoryError::Sqlite { .. }) => assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
            other => panic!("garbage in {} was opened: {other:?}", path.display()),
        }
    }

    #[test]
    fn an_output_directory_is_held_by_queued_running_and_succeeded_jobs() {
        let (_dir, mut history) = new_history();
        let queued = history.submit("{}", Path::new("/queued"), "normal", at(1)).unwrap();
        let running = started_job(&mut history, "/running", 1);
        let succeeded = finished(&mut history, "/succeeded", JobState::Succeeded, 1, 2);
        finished(&mut history, "/failed", JobState::Failed, 1, 2);
        finished(&mut history, "/cancelled", JobState::Cancelled, 1, 2);

        let holder = |dir: &str| history.output_dir_holder(Path::new(dir)).unwrap();
        assert_eq!(holder("/queued"), Some((queued, JobState::Queued)));
        assert_eq!(holder("/running"), Some((running, JobState::Running)));
        assert_eq!(holder("/succeeded"), Some((succeeded, JobState::Succeeded)));
        assert_eq!(holder("/failed"), None);
        assert_eq!(holder("/cancelled"), None);
        assert_eq!(holder("/never"), None);
        assert_eq!(holder("/queued/"), None, "paths are compared as given");

        // A job queued on a succeeded job's directory is named first.
        let next = history.submit("{}", Path::new("/succeeded"), "normal", at(3)).unwrap();
        assert_eq!(history.output_dir_holder(Path::new("/succeeded")).unwrap(), Some((next, JobState::Queued)));
        // A pruned job holds nothing.
        history.ended(next, outcome(JobState::Cancelled), at(4)).unwrap();
        history.prune(Some(0), None, at(5)).unwrap();
        assert_eq!(history.output_dir_holder(Path::new("/succeeded")).unwrap(), None);
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let (_dir, mut history) = new_history();
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/out\xff"));
        assert!(matches!(history.submit("{}", path, "normal", at(1)), Err(HistoryError::PathNotUtf8 { .. })));
        assert!(matches!(history.output_dir_holder(path), Err(HistoryError::PathNotUtf8 { .. })));
    }

    #[test]
    fn garbage_in_the_file_is_a_typed_error() {
        let (_dir, mut history) = new_history();
        let id = history.submit("{}", Path::new("/out"), "normal", at(1)).unwrap();
        // The schema's CHECK refuses an unknown state; a file damaged or
        // written by other hands need not have kept to it.
        history.connection.pragma_update(None, "ignore_check_constraints", true).unwrap();
        history.connection.execute("UPDATE jobs SET state = 'exploded' WHERE id = ?1", params![row_id(id)]).unwrap();

        let is_bad_state = |e: &HistoryError| matches!(e, HistoryError::Corrupt { what, .. } if *what == format!("job {id}'s state"));
        let e = history.get(id).unwrap_err();
        assert!(is_bad_state(&e), "{e:?}");
        assert!(e.to_string().contains("exploded"), "{e}");
        let e = history.list(&JobFilter::default()).unwrap_err();
        assert!(is_bad_state(&e), "{e:?}");
        let e = history.started(id, at(2)).unwrap_err();
        assert!(is_bad_state(&e), "{e:?}");
        let e = history.ended(id, outcome(JobState::Failed), at(2)).unwrap_err();
        assert!(is_bad_state(&e), "{e:?}");

        history.connection.execute("UPDATE jobs SET state = x'00ff' WHERE id = ?1", params![row_id(id)]).unwrap();
        let e = history.started(id, at(2)).unwrap_err();
        assert!(is_bad_state(&e), "{e:?}");

        history.connection.execute("UPDATE jobs SET state = 'queued', submitted_ms = 'yesterday' WHERE id = ?1", params![row_id(id)]).unwrap();
        let e = history.get(id).unwrap_err();
        assert!(matches!(&e, HistoryError::Corrupt { what, .. } if *what == format!("job {id}'s submitted_ms")), "{e:?}");
        history.connection.execute("UPDATE jobs SET submitted_ms = -5 WHERE id = ?1", params![row_id(id)]).unwrap();
        let e = history.get(id).unwrap_err();
        assert!(matches!(&e, HistoryError::Corrupt { what, .. } if *what == format!("job {id}'s submitted_ms")), "{e:?}");
    }

    #[test]
    fn an_output_directory_holder_with_a_garbage_id_is_a_typed_error() {
        let (_dir, mut history) = new_history();
        let id = history.submit("{}", Path::new("/out"), "normal", at(1)).unwrap();
        history.connection.execute("UPDATE jobs SET id = -3 WHERE id = ?1", params![row_id(id)]).unwrap();
        let e = history.output_dir_holder(Path::new("/out")).unwrap_err();
        assert!(matches!(&e, HistoryError::Corrupt { what, .. } if what == "a holder's id"), "{e:?}");
    }
}
