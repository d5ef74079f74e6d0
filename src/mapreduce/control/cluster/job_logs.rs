//! Each job's log lines, kept apart for `mr logs`: a `tracing` layer that
//! appends every line logged inside a job's span (`job{id=job-N}`: its
//! engine's planning, every call its workers make, its end) to
//! `<state-dir>/logs/job-N.log`, one line per event, with the task and
//! attempt it names (`task=map task 3 attempt=7`), so that `mr logs ID
//! --task map-3` finds one task's. In a cluster every attempt's start
//! and success is among them.
//!
//! The lines are the coordinator's: what it gave out, what came back, what
//! it gave up and why (a failed attempt's error is in its line). A worker's
//! own log stays on its machine.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::cluster::queue::JobId;

/// The folder in the state directory that holds the jobs' logs.
pub const LOGS_DIR: &str = "logs";

/// The name of the span a job's work runs in; its field `id` is the job's.
pub const JOB_SPAN: &str = "job";

/// The most lines `mr logs` is sent at once (the newest).
pub const MAX_LINES: usize = 2_000;

/// The most bytes of a log's end read for `mr logs`.
const MAX_READ_BYTES: u64 = 4 << 20;

/// Where job `id`'s log lines are.
pub fn log_path(state_dir: &Path, id: JobId) -> PathBuf {
    state_dir.join(LOGS_DIR).join(format!("{id}.log"))
}

/// The layer: lines at INFO and above inside a job's span go to the job's
/// file.
pub struct JobLogs {
    dir: PathBuf,
}

impl JobLogs {
    /// Writes job logs under `<state_dir>/logs/`, which it makes.
    pub fn new(state_dir: &Path) -> std::io::Result<JobLogs> {
        let dir = state_dir.join(LOGS_DIR);
        std::fs::create_dir_all(&dir)?;
        Ok(JobLogs { dir })
    }
}

/// A job's id, kept in its span's extensions.
struct JobOfSpan(String);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JobLogs {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != JOB_SPAN {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let job = fields.pairs.iter().find(|(name, _)| name == "id").map(|(_, value)| value.clone());
        if let (Some(job), Some(span)) = (job, ctx.span(id)) {
            span.extensions_mut().insert(JobOfSpan(job));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() > Level::INFO {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else { return };
        let Some(job) = scope.from_root().find_map(|span| span.extensions().get::<JobOfSpan>().map(|job| job.0.clone())) else { return };
        // Only ids the cluster wrote: a file name from nothing else.
        if job.parse::<JobId>().is_err() {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = fields.line(event.metadata().level());
        let path = self.dir.join(format!("{job}.log"));
        let written = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(e) = written {
            // Not through tracing: this is the layer that would take it.
            eprintln!("cannot write the job log {}: {e}", path.display());
        }
    }
}

/// An event's or a span's fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.pairs.push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.pairs.push((field.name().to_owned(), value.to_owned()));
        }
    }
}

impl Fields {
    /// `<time> <LEVEL> <message> k=v ...\n`, on one line whatever the text.
    fn line(&self, level: &Level) -> String {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut line = String::new();
        // The same clock text as the process's own log lines.
        let _ = tracing_subscriber::fmt::time::SystemTime.format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut line));
        let _ = write!(line, " {level:>5} {}", self.message);
        for (name, value) in &self.pairs {
            let _ = write!(line, " {name}={value}");
        }
        let mut line: String = line.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
        line.push('\n');
        line
    }
}

/// The lines of job `id`'s log, the newest [`MAX_LINES`] at most; with
/// `task` (`map-3`, `reduce-0`), only those that name it.
pub fn read(state_dir: &Path, id: JobId, task: Option<&str>) -> std::io::Result<Vec<String>> {
    let text = match read_end(&log_path(state_dir, id)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let wanted = task.map(|task| format!("task={} ", task_name(task)));
    let lines: Vec<String> =
        text.lines().filter(|line| wanted.as_ref().is_none_or(|wanted| format!("{line} ").contains(wanted.as_str()))).map(str::to_owned).collect();
    let skip = lines.len().saturating_sub(MAX_LINES);
    Ok(lines.into_iter().skip(skip).collect())
}

/// A task as log lines name it (`map task 3`), from `map-3`, `map 3` or
/// that name itself.
fn task_name(task: &str) -> String {
    let words: Vec<&str> = task.split(['-', ' ']).filter(|word| !word.is_empty() && *word != "task").collect();
    match words.as_slice() {
        [kind, number] => format!("{kind} task {number}"),
        _ => task.to_owned(),
    }
}

/// The last [`MAX_READ_BYTES`] of the file at `path`, from its first whole
/// line.
fn read_end(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let start = file.metadata()?.len().saturating_sub(MAX_READ_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(MAX_READ_BYTES).read_to_end(&mut bytes)?;
    let whole = match start {
        0 => &bytes[..],
        _ => bytes.iter().position(|&b| b == b'\n').and_then(|newline| bytes.get(newline + 1..)).unwrap_or_default(),
    };
    Ok(String::from_utf8_lossy(whole).into_owned())
}

/// Removes the logs of jobs for which `keep` says no (pruned from the
/// history).
pub fn prune(state_dir: &Path, keep: impl Fn(JobId) -> bool) {
    let Ok(entries) = std::fs::read_dir(state_dir.join(LOGS_DIR)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|name| name.strip_suffix(".log")).and_then(|id| id.parse::<JobId>().ok()) else { continue };
        if !keep(id) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn lines_inside_a_jobs_span_go_to_its_file_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let subscriber = tracing_subscriber::registry().with(JobLogs::new(dir.path()).unwrap());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any job");
            tracing::info_span!("job", id = %JobId(7)).in_scope(|| {
                tracing::info!("planned");
                tracing::warn!(task = "map task 3", attempt = 5, "attempt failed: bad\nline");
                tracing::debug!("too fine");
            });
            tracing::info_span!("job", id = %JobId(8)).in_scope(|| tracing::info!(task = "reduce task 0", "done"));
        });
        let seven = read(dir.path(), JobId(7), None).unwrap();
        assert_eq!(seven.len(), 2, "{seven:?}");
        assert!(seven[0].ends_with(" INFO planned"), "{seven:?}");
        assert!(seven[1].contains("WARN attempt failed: bad line task=map task 3 attempt=5"), "{seven:?}");
        for name in ["map-3", "map 3", "map task 3"] {
            assert_eq!(read(dir.path(), JobId(7), Some(name)).unwrap().len(), 1, "{name}");
        }
        assert!(read(dir.path(), JobId(7), Some("map-30")).unwrap().is_empty());
        assert_eq!(read(dir.path(), JobId(8), Some("reduce-0")).unwrap().len(), 1);
        assert_eq!(read(dir.path(), JobId(8), None).unwrap().len(), 1);
        assert!(read(dir.path(), JobId(9), None).unwrap().is_empty());
        prune(dir.path(), |id| id != JobId(7));
        assert!(!log_path(dir.path(), JobId(7)).exists() && log_path(dir.path(), JobId(8)).exists());
    }
}
