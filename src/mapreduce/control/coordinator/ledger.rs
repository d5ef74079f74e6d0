//! Where a job's finished work is kept, so that a restarted coordinator
//! resumes it: [`Ledger`] (the job directory and its journal, publication
//! of the outputs), what a job is recognised by ([`fingerprint`]), and
//! restoring the scheduler and status from an earlier coordinator's
//! journal ([`restore`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::job_dir::{JobDir, Opened};
use crate::journal::{Journal, Record};
use crate::map_output::run_is_present;
use crate::output::OutputCompression;
use crate::rpc::{JobEnd, TaskId};
use crate::scheduler::Scheduler;
use crate::status::JobStatus;

use super::engine::Shared;
use super::CoordinatorConfig;

/// Where finished work is kept: the job directory, and the journal that
/// lets a restarted coordinator resume the job.
pub(super) struct Ledger {
    pub(super) dir: JobDir,
    /// `None` once a write failed: the job goes on, but a restarted
    /// coordinator would redo what was not journaled.
    pub(super) journal: Option<Journal>,
    /// The job's id, kept across restarts.
    pub(super) id: String,
    /// The journal says `Publishing`: from here on the job directory must
    /// survive a failure, so that a new run finishes the move.
    pub(super) publishing: bool,
    /// Every output is in the output directory.
    pub(super) published: bool,
}

impl Ledger {
    /// Appends `record` to the journal, or gives up journaling with a
    /// warning if it cannot be written.
    pub(super) fn record(&mut self, record: &Record) {
        let Some(journal) = &mut self.journal else { return };
        if let Err(e) = journal.append(record) {
            tracing::warn!("{e}; the job goes on, but a restarted coordinator would redo the tasks finished from now on");
            self.journal = None;
        }
    }

    /// Moves the outputs into the output directory once every task that
    /// writes one is done (see [`JobDir::publish`]): journals `Publishing`, synced, first,
    /// so that a coordinator killed halfway finishes the move when started
    /// again. A failure stops the job.
    pub(super) fn publish_if_done(&mut self, scheduler: &mut Scheduler) {
        if self.published || scheduler.job_end() != Some(JobEnd::Succeeded) {
            return;
        }
        self.record(&Record::Publishing);
        if let Some(Err(e)) = self.journal.as_ref().map(Journal::sync) {
            tracing::warn!("{e}");
        }
        self.publishing = true;
        match self.dir.publish(scheduler.output_count(), &self.id) {
            Ok(()) => self.published = true,
            Err(e) => scheduler.abort(format!("publishing the outputs: {e}")),
        }
    }
}

/// Removes the job directory of an ended job, with its intermediate files
/// and the outputs of losing attempts; a failed job's outputs go with it,
/// leaving the output directory as it was. Kept only when publication
/// began and failed, so that a new run finishes it.
pub(super) fn remove_job_dir_unless_publishing(shared: &Shared) {
    let job = shared.job();
    let ledger = &job.ledger;
    if ledger.publishing && !ledger.published {
        tracing::warn!("the job directory {} is kept: run the same command again to finish moving the outputs", ledger.dir.path().display());
    } else {
        ledger.dir.remove();
    }
}

/// What a job is planned from: a coordinator resumes an earlier one's job
/// only if this is the same. The app given with `--app` is part of it, so
/// that a job resumed with another build starts over instead of mixing
/// two apps' outputs (a job without `--app` keeps its journaled pin).
pub(super) fn fingerprint(config: &CoordinatorConfig) -> serde_json::Value {
    let mut fingerprint = serde_json::json!({
        "inputs": config.inputs,
        "split_bytes": config.split_bytes,
        "reduces": config.reduces,
        "params": config.params,
        "app": config.app.as_ref().map(|(_, app)| &app.sha256),
    });
    // Named only when set, so that a job journaled before these settings
    // existed still resumes.
    if config.output_compression != OutputCompression::None {
        fingerprint["output_compression"] = serde_json::json!(config.output_compression);
    }
    if !config.files.is_empty() {
        fingerprint["files"] = config.files.iter().map(|(_, file)| serde_json::json!([file.name, file.sha256])).collect();
    }
    fingerprint
}

/// Marks done what an earlier coordinator finished, as its journal says,
/// where the files it names are still there.
pub(super) fn restore(scheduler: &mut Scheduler, status: &mut JobStatus, opened: &Opened, output_dir: &Path, now: Instant) {
    let recovered = &opened.recovered;
    let (mut maps, mut reduces) = (0, 0);
    // During publication an output may have moved already. Its size must
    // be what the attempt wrote: a file cut short (a machine that lost
    // power before writing it back) is made again.
    let output_present = |r: u32, counters: &crate::counters::Counters| {
        let whole = |path: PathBuf| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == counters.output_bytes);
        whole(opened.dir.finished_output(r)) || (recovered.publishing && whole(output_dir.join(opened.dir.published_name(r))))
    };
    for (m, attempt, outputs, counters) in &recovered.maps {
        let task = TaskId::Map(*m);
        let owner = recovered.owner_of(task, *attempt).cloned();
        // A map-only job's map wrote an output of the job, not runs.
        let present = match scheduler.map_only() {
            true => output_present(*m, counters),
            false => outputs.iter().all(|(_, location)| run_is_present(location)),
        };
        if present && scheduler.restore(task, *attempt, owner, outputs.clone(), now) {
            status.task_restored(task, counters.clone(), now);
            maps += 1;
        }
    }
    for (r, attempt, counters) in &recovered.reduces {
        let task = TaskId::Reduce(*r);
        let present = output_present(*r, counters);
        let owner = recovered.owner_of(task, *attempt).cloned();
        if present && scheduler.restore(task, *attempt, owner, Vec::new(), now) {
            status.task_restored(task, counters.clone(), now);
            reduces += 1;
        }
    }
    // Attempts given out before the restart may still report, from the
    // process they were given to; the summary shows them all.
    let mut shown = HashSet::new();
    for (task, attempt, owner) in &recovered.given {
        scheduler.restore_given(*task, *attempt, owner.clone());
        // A record of a task this job has not, or of an attempt already
        // shown, is not the scheduler's: nothing to show.
        if scheduler.owner_of(*task, *attempt) != Some(owner) || !shown.insert((*task, *attempt)) {
            continue;
        }
        let won = matches!(scheduler.state(*task), crate::scheduler::TaskState::Done { attempt: winner } if winner == attempt);
        status.attempt_restored(*task, *attempt, &owner.worker, won);
    }
    if opened.epoch > 0 {
        let progress = scheduler.progress();
        tracing::info!(
            "resuming job {} (start {}): {maps} of {} map tasks and {reduces} of {} reduce tasks were done",
            opened.id,
            opened.epoch + 1,
            progress.maps,
            progress.reduces
        );
    }
}
