//! The job's status in the Prometheus text exposition format (version
//! 0.0.4), served at `/metrics`: the numbers of [`StatusReport`], with
//! task durations as a histogram. Every metric is named `mapreduce_*`.

use std::fmt::Write as _;

use crate::memory_budget::WorkerMemory;
use crate::status::{AttemptOutcome, JobState, StatusReport, TaskKind};

/// Upper bounds, in seconds, of the task duration histogram's buckets.
const DURATION_BUCKETS: [f64; 13] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `report` as Prometheus text.
pub fn render(report: &StatusReport) -> String {
    let mut out = Exposition::default();
    let job = &report.job;
    out.family("mapreduce_job_running", "gauge", "1 while the job runs, 0 once it has ended.");
    out.sample("mapreduce_job_running", &[], u64::from(job.state == JobState::Running) as f64);
    out.family("mapreduce_job_succeeded", "gauge", "1 once every output is final.");
    out.sample("mapreduce_job_succeeded", &[], u64::from(job.state == JobState::Succeeded) as f64);
    out.family("mapreduce_job_elapsed_seconds", "gauge", "Seconds since the job started (until it ended).");
    out.sample("mapreduce_job_elapsed_seconds", &[], job.elapsed_secs);
    out.family("mapreduce_job_start_time_seconds", "gauge", "When the job started, in seconds since the Unix epoch.");
    out.sample("mapreduce_job_start_time_seconds", &[], job.started_unix_ms as f64 / 1000.0);
    out.family("mapreduce_input_bytes", "gauge", "Total size of the job's input files.");
    out.sample("mapreduce_input_bytes", &[], job.input_bytes as f64);
    out.family("mapreduce_progress_ratio", "gauge", "Fraction of the job done, 0 to 1.");
    out.sample("mapreduce_progress_ratio", &[], report.progress.fraction_done);

    out.family("mapreduce_tasks", "gauge", "Tasks by kind and state.");
    for (kind, counts) in [("map", report.progress.maps), ("reduce", report.progress.reduces)] {
        for (state, n) in [("idle", counts.idle), ("running", counts.running), ("done", counts.done)] {
            out.sample("mapreduce_tasks", &[("kind", kind), ("state", state)], n as f64);
        }
    }

    out.family("mapreduce_attempts_total", "counter", "Task attempts by kind and outcome.");
    for kind in [TaskKind::Map, TaskKind::Reduce] {
        let attempts = || report.tasks.iter().filter(|t| t.kind == kind).flat_map(|t| &t.attempts);
        for outcome in AttemptOutcome::NAMES {
            let n = attempts().filter(|a| a.outcome.name() == outcome).count();
            out.sample("mapreduce_attempts_total", &[("kind", kind.name()), ("outcome", outcome)], n as f64);
        }
    }

    out.family("mapreduce_backup_attempts_total", "counter", "Backup attempts of stragglers by kind, and how many of them won.");
    for kind in [TaskKind::Map, TaskKind::Reduce] {
        let backups = || report.tasks.iter().filter(|t| t.kind == kind).flat_map(|t| &t.attempts).filter(|a| a.backup);
        out.sample(
            "mapreduce_backup_attempts_total",
            &[("kind", kind.name()), ("won", "false")],
            backups().filter(|a| a.outcome != AttemptOutcome::Succeeded).count() as f64,
        );
        out.sample(
            "mapreduce_backup_attempts_total",
            &[("kind", kind.name()), ("won", "true")],
            backups().filter(|a| a.outcome == AttemptOutcome::Succeeded).count() as f64,
        );
    }

    out.family("mapreduce_refused_calls_total", "counter", "Reports, uploads and calls refused after the handshake (forged, stale or malformed).");
    out.sample("mapreduce_refused_calls_total", &[], job.refused_calls as f64);

    out.family("mapreduce_workers_alive", "gauge", "Workers running a task or heard from within the task timeout.");
    out.sample("mapreduce_workers_alive", &[], report.workers.iter().filter(|w| w.alive).count() as f64);
    out.family("mapreduce_workers_seen", "gauge", "Workers that have called the coordinator during the job.");
    out.sample("mapreduce_workers_seen", &[], report.workers.len() as f64);
    let memory: Vec<(&str, WorkerMemory)> = report
        .workers
        .iter()
        .map(|w| (w.id.as_str(), WorkerMemory { peak_rss_bytes: w.peak_rss_bytes, budget_bytes: w.memory_budget_bytes }))
        .collect();
    worker_memory(&mut out, &memory);

    for (name, value) in report.counters.builtin() {
        let metric = format!("mapreduce_{name}_total");
        out.family(&metric, "counter", &format!("Built-in counter {name}, over the tasks' winning attempts."));
        out.sample(&metric, &[], value as f64);
    }
    out.family("mapreduce_app_counter_total", "counter", "The app's own counters, over the tasks' winning attempts.");
    for (name, &value) in &report.counters.user {
        out.sample("mapreduce_app_counter_total", &[("name", name)], value as f64);
    }

    out.family("mapreduce_task_duration_seconds", "histogram", "Wall time of successful task attempts.");
    for kind in [TaskKind::Map, TaskKind::Reduce] {
        let durations: Vec<f64> = report
            .tasks
            .iter()
            .filter(|t| t.kind == kind)
            .flat_map(|t| &t.attempts)
            .filter(|a| a.outcome == AttemptOutcome::Succeeded)
            .filter_map(|a| Some(a.end_secs? - a.start_secs))
            .collect();
        out.histogram("mapreduce_task_duration_seconds", kind.name(), &durations);
    }
    out.text
}

/// The workers' peak memory and budgets, as each last said: one job's
/// workers, or a cluster's.
pub fn worker_memory(out: &mut Exposition, workers: &[(&str, WorkerMemory)]) {
    out.family("mapreduce_worker_peak_rss_bytes", "gauge", "Peak resident memory of a worker and its task processes since it started.");
    for (id, memory) in workers {
        if let Some(peak) = memory.peak_rss_bytes {
            out.sample("mapreduce_worker_peak_rss_bytes", &[("worker", id)], peak as f64);
        }
    }
    out.family("mapreduce_worker_memory_budget_bytes", "gauge", "A worker's memory budget (mr-worker --memory).");
    for (id, memory) in workers {
        if let Some(budget) = memory.budget_bytes {
            out.sample("mapreduce_worker_memory_budget_bytes", &[("worker", id)], budget as f64);
        }
    }
}

/// Text being written in the exposition format: families and their
/// samples.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// The text written so far.
    pub fn into_text(self) -> String {
        self.text
    }

    /// Starts a family: its help and type lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of the family, with label values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.text, "{label}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// Cumulative buckets, `+Inf`, sum and count of `values` for one kind.
    fn histogram(&mut self, name: &str, kind: &str, values: &[f64]) {
        let bucket = format!("{name}_bucket");
        for bound in DURATION_BUCKETS {
            let n = values.iter().filter(|&&v| v <= bound).count();
            self.sample(&bucket, &[("kind", kind), ("le", &bound.to_string())], n as f64);
        }
        self.sample(&bucket, &[("kind", kind), ("le", "+Inf")], values.len() as f64);
        self.sample(&format!("{name}_sum"), &[("kind", kind)], values.iter().sum());
        self.sample(&format!("{name}_count"), &[("kind", kind)], values.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counters;
    use crate::status::{AttemptStatus, JobReport, Phase, Progress, TaskCounts, TaskReport, TaskStateName};

    #[test]
    fn renders_counts_counters_and_a_cumulative_histogram() {
        let attempt = |start: f64, end: f64, outcome| AttemptStatus {
            attempt: 1,
            worker: "w".into(),
            start_secs: start,
            backup: false,
            end_secs: Some(end),
            outcome,
            bytes_in: None,
            bytes_out: None,
            before_restart: false,
        };
        let report = StatusReport {
            job: JobReport {
                state: JobState::Running,
                phase: Phase::Map,
                error: None,
                inputs: vec![],
                input_bytes: 300,
                maps: 2,
                reduces: 1,
                started_unix_ms: 1_700_000_000_000,
                elapsed_secs: 4.0,
                map_phase_secs: None,
                reduce_phase_secs: None,
                refused_calls: 3,
            },
            progress: Progress {
                maps: TaskCounts { total: 2, idle: 0, running: 1, done: 1 },
                reduces: TaskCounts { total: 1, idle: 1, running: 0, done: 0 },
                input_bytes_done: 100,
                input_bytes_per_sec: 25.0,
                fraction_done: 0.25,
                eta_secs: Some(12.0),
            },
            tasks: vec![TaskReport {
                kind: TaskKind::Map,
                id: 0,
                input: "a".into(),
                input_bytes: Some(100),
                state: TaskStateName::Done,
                attempts: vec![attempt(0.0, 0.3, AttemptOutcome::Failed("x".into())), attempt(0.5, 2.0, AttemptOutcome::Succeeded)],
                bytes_in: Some(100),
                bytes_out: Some(7),
                skipped_records: vec![],
            }],
            workers: vec![],
            counters: Counters { map_input_bytes: 100, user: [("say \"hi\"".to_string(), 3)].into(), ..Counters::default() },
        };
        let text = render(&report);
        for line in [
            "mapreduce_tasks{kind=\"map\",state=\"running\"} 1",
            "mapreduce_attempts_total{kind=\"map\",outcome=\"failed\"} 1",
            "mapreduce_attempts_total{kind=\"map\",outcome=\"succeeded\"} 1",
            "mapreduce_map_input_bytes_total 100",
            "mapreduce_app_counter_total{name=\"say \\\"hi\\\"\"} 3",
            "mapreduce_task_duration_seconds_bucket{kind=\"map\",le=\"1\"} 0",
            "mapreduce_task_duration_seconds_bucket{kind=\"map\",le=\"2.5\"} 1",
            "mapreduce_task_duration_seconds_bucket{kind=\"map\",le=\"+Inf\"} 1",
            "mapreduce_task_duration_seconds_sum{kind=\"map\"} 1.5",
            "mapreduce_task_duration_seconds_count{kind=\"reduce\"} 0",
            "# TYPE mapreduce_task_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
