//! Steps: a job whose input is another job's output (`mr submit
//! --input-job ID`), as mrjob's steps or a chain of Hadoop jobs.
//!
//! An input job that has succeeded gives its outputs at once: the files
//! its summary lists, each still of the size it was written with (an output
//! edited, removed or replaced by a later job since is refused, naming
//! it). An input job that is queued or running makes the new job wait out
//! of the queue ([`Admitted::waits_for`]); when it succeeds its outputs
//! join the waiting job's inputs (written to the history, so a restart
//! resumes from there), and once nothing is left to wait for the job is
//! queued as any other. An input job that fails or is cancelled fails
//! every job waiting for it, and so on down the chain.
//!
//! Outputs a job reads are protected while it has not ended: no new job
//! may write into the directory that holds them (even with
//! `--overwrite`), nor into or around an input job's output directory.

use std::path::{Path, PathBuf};

use crate::cluster::admission::{check_map_tasks, real, Admitted};
use crate::cluster::history::{History, JobState};
use crate::cluster::queue::JobId;
use crate::cluster::registry::State;
use crate::rpc::InputFile;
use crate::summary::JobSummary;

/// Takes `admitted`'s input jobs: the outputs of those that succeeded join
/// its inputs, those unfinished go to [`Admitted::waits_for`]. Refused (in
/// one line) for an input job that does not exist or did not succeed, an
/// output that changed since, or an output directory that would write
/// over or around an input job's outputs.
pub(super) fn take_input_jobs(history: &History, admitted: &mut Admitted) -> Result<(), String> {
    let mut waits_for = Vec::new();
    let mut seen = Vec::new();
    for &id in &admitted.submission.input_jobs.clone() {
        // `--input-job 3 --input-job 3` reads job-3's outputs once.
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let record = history.get(id.0).map_err(|e| e.to_string())?.ok_or_else(|| format!("--input-job {id}: no such job"))?;
        check_apart_from_input(&admitted.output_dir, id, &record.output_dir)?;
        match record.state {
            JobState::Queued | JobState::Running => waits_for.push(id),
            JobState::Succeeded => admitted.inputs.extend(outputs_of(history, id)?),
            JobState::Failed | JobState::Cancelled => return Err(format!("--input-job {id}: it {}, so it has no outputs", record.state)),
        }
    }
    admitted.waits_for = waits_for;
    check_map_tasks(&admitted.inputs, admitted.submission.job.split_size)
}

/// A job may not write into, around or over its input job's outputs.
fn check_apart_from_input(output_dir: &Path, id: JobId, input_dir: &Path) -> Result<(), String> {
    let input_dir = real(input_dir);
    if output_dir.starts_with(&input_dir) || input_dir.starts_with(output_dir) {
        return Err(format!(
            "output directory {} would write over the outputs of {id}, its input, in {}: give another --output-dir",
            output_dir.display(),
            input_dir.display()
        ));
    }
    Ok(())
}

/// Succeeded job `id`'s outputs, as its summary lists them, each checked
/// to be what it wrote: still there, of the same size, and not since
/// replaced by another job's.
pub(super) fn outputs_of(history: &History, id: JobId) -> Result<Vec<InputFile>, String> {
    let record = history.get(id.0).map_err(|e| e.to_string())?.ok_or_else(|| format!("{id} is no longer in the history (pruned)"))?;
    if record.state != JobState::Succeeded {
        return Err(format!("{id} {}, so it has no outputs", record.state));
    }
    match history.output_dir_holder(&record.output_dir).map_err(|e| e.to_string())? {
        Some((holder, _)) if holder == id.0 => {}
        Some((holder, state)) => {
            return Err(format!("{id}'s outputs in {} were replaced by job-{holder}'s (it {state})", record.output_dir.display()));
        }
        None => return Err(format!("{id}'s outputs in {} are no longer its", record.output_dir.display())),
    }
    let summary = record.outcome.as_ref().and_then(|outcome| outcome.counters_json.as_deref()).ok_or_else(|| format!("{id} has no summary"))?;
    let summary: JobSummary = serde_json::from_str(summary).map_err(|e| format!("{id}'s summary cannot be read: {e}"))?;
    let paths: Vec<PathBuf> = summary.outputs.iter().map(|output| output.path.clone()).collect();
    let inputs = crate::inputs::resolve_inputs(&paths).map_err(|e| format!("{id}'s outputs: {e}"))?;
    for (input, output) in inputs.iter().zip(&summary.outputs) {
        // What the job wrote is a regular file; a link put in its place
        // since would make workers read whatever it points to.
        if !std::fs::symlink_metadata(&input.path).is_ok_and(|metadata| metadata.file_type().is_file()) {
            return Err(format!("{id}'s output {} is no longer the file it wrote", input.path.display()));
        }
        if input.size != output.bytes {
            return Err(format!(
                "{id}'s output {} changed since it was written ({} bytes then, {} now)",
                input.path.display(),
                output.bytes,
                input.size
            ));
        }
    }
    Ok(inputs)
}

/// Job `ended` has ended in `how`: the jobs waiting for it take its
/// outputs (and are queued once they wait for nothing more) or, if it did
/// not succeed or its outputs cannot be read, fail. Returns the jobs that
/// fail, with why, for the caller to record (which settles the jobs
/// waiting for them in turn).
pub(super) fn settle_waiting(state: &mut State, ended: JobId, how: JobState) -> Vec<(JobId, String)> {
    let waiting: Vec<JobId> = state.unfinished.iter().filter(|(_, job)| job.admitted.waits_for.contains(&ended)).map(|(id, _)| *id).collect();
    let mut failed = Vec::new();
    for id in waiting {
        let taken = match how {
            JobState::Succeeded => outputs_of(&state.history, ended).and_then(|outputs| take_outputs(state, id, ended, outputs)),
            other => Err(format!("its input job {ended} {other}")),
        };
        if let Err(why) = taken {
            tracing::warn!(job = %id, "cannot run: {why}");
            failed.push((id, why));
        }
    }
    failed
}

/// Waiting job `id` takes `outputs` of input job `ended` as inputs: the
/// history records them first, then the job is queued if it waits for
/// nothing more.
fn take_outputs(state: &mut State, id: JobId, ended: JobId, outputs: Vec<InputFile>) -> Result<(), String> {
    let Some(job) = state.unfinished.get(&id) else { return Ok(()) };
    let mut admitted = job.admitted.clone();
    admitted.waits_for.retain(|waited| *waited != ended);
    admitted.inputs.extend(outputs);
    if admitted.waits_for.is_empty() && admitted.inputs.is_empty() {
        return Err(format!("its input jobs wrote no outputs ({ended} was the last)"));
    }
    let spec_json = serde_json::to_string(&admitted).map_err(|e| format!("encoding the job: {e}"))?;
    state.history.respecify(id.0, &spec_json).map_err(|e| e.to_string())?;
    tracing::info!(job = %id, "takes the outputs of {ended}");
    if admitted.waits_for.is_empty() {
        let submission = &admitted.submission;
        state.queue.submit(id, submission.priority, submission.weight, submission.requires.clone()).map_err(|e| e.to_string())?;
    }
    if let Some(job) = state.unfinished.get_mut(&id) {
        job.admitted = admitted;
    }
    Ok(())
}

/// Why a waiting job waits: one line per input job it waits for.
pub(super) fn waiting_reasons(state: &State, admitted: &Admitted) -> Vec<String> {
    admitted
        .waits_for
        .iter()
        .map(|id| {
            let how = state.history.get(id.0).ok().flatten().map_or_else(|| "gone".to_owned(), |record| record.state.to_string());
            format!("waits for the output of {id} (it is {how})")
        })
        .collect()
}

/// A new job must not write where an unfinished job reads: the output
/// directory holds none of their inputs. (Input jobs' output directories
/// are guarded as every unfinished job's output directory is.)
pub(super) fn check_not_over_inputs(state: &State, output_dir: &Path) -> Result<(), String> {
    for (id, job) in &state.unfinished {
        if let Some(input) = job.admitted.inputs.iter().find(|input| real(&input.path).starts_with(output_dir)) {
            return Err(format!("output directory {} holds {}, an input of {id}, which has not ended", output_dir.display(), input.path.display()));
        }
    }
    Ok(())
}

/// A new job must not read where an unfinished job writes: none of its
/// inputs lies in an unfinished or finishing job's output directory,
/// where it would read outputs before they are whole (`--input-job` is
/// the way to read them once they are).
pub(super) fn check_not_reading_outputs(state: &State, inputs: &[InputFile]) -> Result<(), String> {
    let unfinished = state.unfinished.iter().map(|(id, job)| (*id, job.admitted.output_dir.clone()));
    let finishing = state.finishing.iter().map(|(id, handle)| (*id, handle.output_dir().to_path_buf()));
    for (id, output_dir) in unfinished.chain(finishing) {
        if let Some(input) = inputs.iter().find(|input| real(&input.path).starts_with(&output_dir)) {
            return Err(format!(
                "input {} is in the output directory of {id}, which has not ended: read its outputs with --input-job {}",
                input.path.display(),
                id.0
            ));
        }
    }
    Ok(())
}
