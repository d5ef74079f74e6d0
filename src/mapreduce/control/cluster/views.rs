//! What the cluster's API shows of its jobs and workers: a job's history
//! record with what only the running cluster knows (its progress, why it
//! waits), and the connected workers with their load.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cluster::admission::Admitted;
use crate::cluster::api::{JobInfo, ListFilter, WorkerInfo};
use crate::cluster::history::{JobFilter, JobRecord, JobState};
use crate::cluster::queue::JobId;
use crate::cluster::registry::{Cluster, State};
use crate::cluster::steps;

impl Cluster {
    /// Job `id` as the API shows it.
    pub fn job(&self, id: JobId) -> Result<JobInfo, String> {
        let state = self.state();
        let record = state.history.get(id.0).map_err(|e| e.to_string())?.ok_or_else(|| format!("no job {id} (never submitted, or pruned)"))?;
        job_info(&state, record)
    }

    /// The unfinished jobs in the order they were submitted, then the
    /// finished ones (newest first) if asked.
    pub fn jobs(&self, filter: ListFilter) -> Result<Vec<JobInfo>, String> {
        let state = self.state();
        let history = &state.history;
        let mut records = history.unfinished().map_err(|e| e.to_string())?;
        if filter.finished {
            let finished =
                JobFilter { states: Some(vec![JobState::Succeeded, JobState::Failed, JobState::Cancelled]), limit: filter.limit.map(|n| n as usize) };
            records.extend(history.list(&finished).map_err(|e| e.to_string())?);
        }
        // A list leaves the summaries out (each may name thousands of
        // outputs); `job` has them.
        records.into_iter().map(|record| job_info(&state, record).map(|info| JobInfo { summary_json: None, ..info })).collect()
    }

    /// The connected long-lived workers.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        self.state()
            .workers
            .live()
            .map(|worker| WorkerInfo {
                id: worker.id.to_owned(),
                labels: worker.labels.to_vec(),
                slots: worker.slots,
                cores: worker.cores,
                load: worker.load,
                memory: worker.memory,
                over_limit: worker.over_limit.map(|over| over.to_string()),
                silent_secs: now.saturating_duration_since(worker.last_heard).as_secs_f64(),
            })
            .collect()
    }
}

/// A history record with what only the running cluster knows.
fn job_info(state: &State, record: JobRecord) -> Result<JobInfo, String> {
    let id = JobId(record.id);
    let admitted: Admitted = serde_json::from_str(&record.spec_json).map_err(|e| format!("{id}'s spec in the history: {e}"))?;
    let submission = admitted.submission;
    let engine = state.unfinished.get(&id).and_then(|job| job.engine.as_ref());
    let progress = engine.map(|engine| engine.handle.progress());
    let mut waiting: Vec<String> = match state.queue.waiting_reasons(id, &state.workers) {
        Ok(reasons) => reasons.iter().map(ToString::to_string).collect(),
        Err(_) => Vec::new(),
    };
    if let Some(job) = state.unfinished.get(&id) {
        waiting.extend(steps::waiting_reasons(state, &job.admitted));
    }
    let outcome = record.outcome.as_ref();
    Ok(JobInfo {
        id,
        state: record.state,
        priority: submission.priority,
        weight: submission.weight,
        requires: submission.requires,
        app: submission.job.app,
        output_dir: record.output_dir,
        submitted_ms: unix_ms(record.submitted),
        started_ms: record.started.map(unix_ms),
        ended_ms: record.ended.map(unix_ms),
        progress,
        waiting,
        error: outcome.and_then(|o| o.error.clone()),
        summary_json: outcome.and_then(|o| o.counters_json.clone()),
    })
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
