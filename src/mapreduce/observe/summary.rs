//! The end-of-job summary `mr-master` prints (and writes as JSON with
//! `--summary-json`): wall time per phase, tasks and attempts with the
//! reasons for every re-execution, the counters, and the output files.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::counters::Counters;
use crate::sequential::SequentialRun;
use crate::status::{task_label, AttemptOutcome, JobState, StatusReport};

/// Re-executed attempts listed one by one in the text summary; the JSON
/// lists them all.
const RETRIES_SHOWN: usize = 10;

/// Workers whose peak memory the text summary lists one by one; past
/// this many it shows the largest.
const WORKERS_SHOWN: usize = 4;

/// What a finished job did; built from its final [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Succeeded or failed (a summary is never taken of a running job).
    pub state: JobState,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Seconds from the start to the end.
    pub elapsed_secs: f64,
    /// Seconds until the last map finished.
    pub map_phase_secs: Option<f64>,
    /// Seconds from then until the job succeeded.
    pub reduce_phase_secs: Option<f64>,
    /// Number of map tasks.
    pub maps: usize,
    /// Number of reduce tasks.
    pub reduces: usize,
    /// Attempts by outcome.
    pub attempts: AttemptCounts,
    /// Every attempt that did not succeed, oldest first: why tasks re-ran.
    pub unsuccessful_attempts: Vec<UnsuccessfulAttempt>,
    /// Bad records skipped (`--skip-bad-records`), maps first.
    #[serde(default)]
    pub skipped_records: Vec<SkippedRecord>,
    /// The job's counters.
    pub counters: Counters,
    /// The output files, `mr-out-0` first, with their sizes.
    pub outputs: Vec<OutputFile>,
    /// Each worker's peak memory, in the order of their ids.
    #[serde(default)]
    pub workers: Vec<WorkerMemoryUse>,
}

/// The most memory one worker has held since it started (a long-lived
/// worker of a cluster: over every job it has served).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMemoryUse {
    /// `host:pid`.
    pub worker: String,
    /// Its peak resident memory, itself and its task processes, as it last
    /// said (see [`crate::memory_budget`]); `None` if it never said.
    pub peak_rss_bytes: Option<u64>,
    /// Its budget (`mr-worker --memory`), if it had one.
    pub budget_bytes: Option<u64>,
}

/// Attempts of a job by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptCounts {
    /// Every attempt issued.
    pub total: usize,
    /// Kept.
    pub succeeded: usize,
    /// Reported an error.
    pub failed: usize,
    /// Given up after making no progress for the task timeout.
    pub timed_out: usize,
    /// Given up because its worker went silent or disconnected.
    pub worker_lost: usize,
    /// Finished after another attempt had won.
    pub duplicate: usize,
    /// Maps whose output was later lost, and reduces that found it so.
    pub lost_data: usize,
    /// Still running when the job ended.
    pub abandoned: usize,
    /// Started as backups of stragglers (whatever their outcome).
    #[serde(default)]
    pub backups: usize,
    /// Backups that finished first and were kept.
    #[serde(default)]
    pub backups_won: usize,
    /// Given out by a coordinator before a restart (counted in the
    /// others too).
    #[serde(default)]
    pub before_restart: usize,
}

/// An attempt that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsuccessfulAttempt {
    /// The task, e.g. `map 3`.
    pub task: String,
    /// The attempt's id.
    pub attempt: u64,
    /// The worker that ran it.
    pub worker: String,
    /// `failed`, `timed_out`, `worker_lost`, `duplicate`, `output_lost`, `input_lost` or `abandoned`.
    pub outcome: String,
    /// The error, where there is one.
    pub error: Option<String>,
}

/// A bad record the job skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    /// The task, e.g. `map 3`.
    pub task: String,
    /// The record: `line at byte B of FILE: "..."` or `key N "..."`.
    pub record: String,
}

/// The output files at `paths` (local, or objects' URLs), with their sizes.
fn output_files(paths: &[PathBuf]) -> Vec<OutputFile> {
    let size = |path: &PathBuf| match crate::remote::is_url(path) {
        true => crate::remote::ObjectUrl::parse(&path.to_string_lossy())
            .ok()
            .and_then(|url| crate::remote::head(&url).ok().flatten())
            .map_or(0, |object| object.size),
        false => std::fs::metadata(path).map_or(0, |m| m.len()),
    };
    paths.iter().map(|path| OutputFile { path: path.clone(), bytes: size(path) }).collect()
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

impl JobSummary {
    /// Summarises a reference run (`mr-sequential`) over `inputs` files as
    /// a job of one map task per input and one reduce, each run once.
    pub fn of_sequential(run: &SequentialRun, inputs: usize) -> JobSummary {
        let tasks = inputs + 1;
        JobSummary {
            state: JobState::Succeeded,
            error: None,
            elapsed_secs: run.map_secs + run.reduce_secs,
            map_phase_secs: Some(run.map_secs),
            reduce_phase_secs: Some(run.reduce_secs),
            maps: inputs,
            reduces: 1,
            attempts: AttemptCounts { total: tasks, succeeded: tasks, ..AttemptCounts::default() },
            unsuccessful_attempts: Vec::new(),
            skipped_records: Vec::new(),
            counters: run.counters.clone(),
            outputs: output_files(std::slice::from_ref(&run.output)),
            workers: Vec::new(),
        }
    }

    /// Summarises the final `report` of a job whose output files are `outputs`.
    pub fn new(report: &StatusReport, outputs: &[PathBuf]) -> JobSummary {
        let mut attempts = AttemptCounts::default();
        let mut unsuccessful_attempts = Vec::new();
        for task in &report.tasks {
            for a in &task.attempts {
                attempts.total += 1;
                attempts.before_restart += usize::from(a.before_restart);
                if a.backup {
                    attempts.backups += 1;
                    attempts.backups_won += usize::from(a.outcome == AttemptOutcome::Succeeded);
                }
                match &a.outcome {
                    AttemptOutcome::Succeeded => {
                        attempts.succeeded += 1;
                        continue;
                    }
                    AttemptOutcome::Running => {}
                    AttemptOutcome::Failed(_) => attempts.failed += 1,
                    AttemptOutcome::TimedOut => attempts.timed_out += 1,
                    AttemptOutcome::WorkerLost(_) => attempts.worker_lost += 1,
                    AttemptOutcome::Duplicate => attempts.duplicate += 1,
                    AttemptOutcome::OutputLost(_) | AttemptOutcome::InputLost(_) => attempts.lost_data += 1,
                    AttemptOutcome::Abandoned => attempts.abandoned += 1,
                }
                unsuccessful_attempts.push(UnsuccessfulAttempt {
                    task: task_label(task.kind, task.id),
                    attempt: a.attempt,
                    worker: a.worker.clone(),
                    outcome: a.outcome.name().to_string(),
                    error: a.outcome.error().map(str::to_owned),
                });
            }
        }
        unsuccessful_attempts.sort_by_key(|a| a.attempt);
        let skipped_records = report
            .tasks
            .iter()
            .flat_map(|t| t.skipped_records.iter().map(|record| SkippedRecord { task: task_label(t.kind, t.id), record: record.clone() }))
            .collect();
        let outputs = output_files(outputs);
        JobSummary {
            state: report.job.state,
            error: report.job.error.clone(),
            elapsed_secs: report.job.elapsed_secs,
            map_phase_secs: report.job.map_phase_secs,
            reduce_phase_secs: report.job.reduce_phase_secs,
            maps: report.job.maps,
            reduces: report.job.reduces,
            attempts,
            unsuccessful_attempts,
            skipped_records,
            counters: report.counters.clone(),
            outputs,
            workers: report
                .workers
                .iter()
                .map(|w| WorkerMemoryUse { worker: w.id.clone(), peak_rss_bytes: w.peak_rss_bytes, budget_bytes: w.memory_budget_bytes })
                .collect(),
        }
    }

    /// The summary as text for a terminal, a few lines long.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verdict = match self.state {
            JobState::Succeeded => "job succeeded",
            JobState::Failed => "job FAILED",
            JobState::Running => "job still running",
        };
        let _ = write!(out, "{verdict} in {:.2} s", self.elapsed_secs);
        if let (Some(map), Some(reduce)) = (self.map_phase_secs, self.reduce_phase_secs) {
            let _ = write!(out, " (map phase {map:.2} s, reduce phase {reduce:.2} s)");
        }
        out.push('\n');
        if let Some(error) = &self.error {
            let _ = writeln!(out, "  error: {error}");
        }
        let a = &self.attempts;
        let _ = write!(out, "tasks: {} map, {} reduce; attempts: {} ({} succeeded", self.maps, self.reduces, a.total, a.succeeded);
        for (n, what) in [
            (a.failed, "failed"),
            (a.timed_out, "timed out"),
            (a.worker_lost, "lost with their worker"),
            (a.duplicate, "duplicate"),
            (a.lost_data, "lost data"),
            (a.abandoned, "abandoned"),
        ] {
            if n > 0 {
                let _ = write!(out, ", {n} {what}");
            }
        }
        if a.backups > 0 {
            let _ = write!(out, "; {} backup{} of stragglers, {} won", a.backups, if a.backups == 1 { "" } else { "s" }, a.backups_won);
        }
        if a.before_restart > 0 {
            let _ = write!(out, "; {} given out before a restart", a.before_restart);
        }
        out.push_str(")\n");
        for u in self.unsuccessful_attempts.iter().take(RETRIES_SHOWN) {
            let _ = write!(out, "  {} attempt {} on {}: {}", u.task, u.attempt, u.worker, u.outcome.replace('_', " "));
            if let Some(e) = &u.error {
                let _ = write!(out, ": {e}");
            }
            out.push('\n');
        }
        if self.unsuccessful_attempts.len() > RETRIES_SHOWN {
            let _ = writeln!(out, "  ... and {} more (see --summary-json)", self.unsuccessful_attempts.len() - RETRIES_SHOWN);
        }
        if !self.skipped_records.is_empty() {
            let _ = writeln!(out, "skipped {} bad record{}:", self.skipped_records.len(), if self.skipped_records.len() == 1 { "" } else { "s" });
            for skipped in &self.skipped_records {
                let _ = writeln!(out, "  {}: {}", skipped.task, skipped.record);
            }
        }
        out.push_str("counters:\n");
        let user = self.counters.user.iter().map(|(name, &v)| (format!("{name} (app)"), v));
        let rows: Vec<(String, u64)> = self.counters.builtin().into_iter().map(|(name, v)| (name.to_string(), v)).chain(user).collect();
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, value) in rows {
            let _ = writeln!(out, "  {name:<width$}  {value:>15}");
        }
        let bytes: u64 = self.outputs.iter().map(|o| o.bytes).sum();
        match (self.outputs.first(), self.outputs.last()) {
            (Some(first), Some(last)) => {
                let _ = writeln!(
                    out,
                    "output: {} file{}, {bytes} bytes: {}{}",
                    self.outputs.len(),
                    if self.outputs.len() == 1 { "" } else { "s" },
                    first.path.display(),
                    if self.outputs.len() > 1 { format!(" .. {}", last.path.display()) } else { String::new() },
                );
            }
            _ => out.push_str("output: none\n"),
        }
        self.render_memory(&mut out);
        out
    }

    /// The workers' peak memory: each one's, for a few; the largest, for many.
    fn render_memory(&self, out: &mut String) {
        let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
        let describe = |w: &WorkerMemoryUse| {
            let peak = w.peak_rss_bytes.map_or_else(|| "unknown".to_owned(), mib);
            let budget = w.budget_bytes.map_or_else(|| "no budget".to_owned(), |b| format!("budget {}", mib(b)));
            format!("{} on {} ({budget})", peak, crate::untrusted::excerpt(&w.worker, 64))
        };
        let shown: Vec<String> = match self.workers.len() {
            0 => return,
            1..=WORKERS_SHOWN => self.workers.iter().map(describe).collect(),
            n => {
                let largest = self.workers.iter().max_by_key(|w| w.peak_rss_bytes).map(describe).unwrap_or_default();
                vec![format!("largest {largest}, of {n} workers")]
            }
        };
        let _ = writeln!(out, "peak memory of each worker and its task processes: {}", shown.join("; "));
    }
}
