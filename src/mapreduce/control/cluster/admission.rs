//! Admission: what a submitted job must pass before it is queued. A job
//! refused here is refused with one line naming the problem, and nothing
//! of it is queued or written.
//!
//! The checks, in order: the settings are in range and go together
//! ([`JobFlags::check`], run again here since a peer sends them); the job
//! names its app, which loads as a plugin of this build (workers of a
//! cluster have no app of their own); every path is absolute (the client
//! resolves them where it runs); the inputs exist and are readable (a
//! pattern must match); the output directory is not a file, not an input
//! nor inside one, holds no input, and is not another job's (queued,
//! running, or holding a finished job's outputs, unless `--overwrite`
//! replaces a finished one's), nor inside or around another unfinished
//! job's, nor holds outputs this cluster did not write. Output directories
//! are compared as the real directories they name (symbolic links
//! resolved). The job must also be of a size the coordinator can plan (at
//! most [`MAX_MAP_TASKS`] map tasks, [`MAX_PARAMS`] parameters). The
//! checks against other jobs need the history and the cluster's table,
//! under the cluster's lock: see [`check_output_holder`] and
//! [`check_apart`].

use std::path::{Path, PathBuf};

use crate::cluster::api::Submission;
use crate::cluster::history::JobState;
use crate::cluster::queue::JobId;
use crate::coordinator::{job_app, CoordinatorConfig};
use crate::rpc::{InputFile, JobApp, ShippedFile};
use crate::untrusted::{excerpt, EXCERPT_CHARS};

/// The most labels a job may require.
pub const MAX_REQUIRED_LABELS: usize = 64;

/// The most jobs whose outputs one job may take as its input.
pub const MAX_INPUT_JOBS: usize = 64;

/// The most map tasks a submitted job may have: the coordinator plans each
/// and keeps it in memory.
pub const MAX_MAP_TASKS: u64 = 1_000_000;

/// The most parameters a submitted job may have, and their most bytes in all.
pub const MAX_PARAMS: usize = 1024;
const MAX_PARAM_BYTES: usize = 1 << 20;

/// A job that passed the checks that need no history: what its engine is
/// planned from, and what the history keeps of it (as JSON), so that a
/// restarted cluster runs it on the same inputs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Admitted {
    /// The submission as it came.
    pub submission: Submission,
    /// Its inputs, resolved.
    pub inputs: Vec<InputFile>,
    /// Its app, loaded once and described.
    pub app: (PathBuf, JobApp),
    /// Its output directory: the real directory it names (absolute,
    /// symbolic links resolved as far as it exists).
    pub output_dir: PathBuf,
    /// Input jobs that have not succeeded yet: it waits for them, out of
    /// the queue (see [`crate::cluster::steps`]). Their outputs join
    /// `inputs` as each succeeds.
    #[serde(default)]
    pub waits_for: Vec<JobId>,
    /// The files it ships (`--files`), checked and described.
    #[serde(default)]
    pub files: Vec<(PathBuf, ShippedFile)>,
}

/// Runs every check of the module's list but the history's; blocks on the
/// file system.
pub fn admit(submission: Submission) -> Result<Admitted, String> {
    let job = &submission.job;
    match submission.input_jobs.is_empty() {
        true => job.check()?,
        false => job.check_settings()?,
    }
    if submission.input_jobs.len() > MAX_INPUT_JOBS {
        return Err(format!("at most {MAX_INPUT_JOBS} --input-job"));
    }
    if submission.weight == 0 {
        return Err("--weight is at least 1".into());
    }
    if submission.requires.len() > MAX_REQUIRED_LABELS {
        return Err(format!("at most {MAX_REQUIRED_LABELS} --require labels"));
    }
    let app = job.app.as_deref().ok_or("a job of a cluster names its app (--app NAME|PATH): the cluster's workers have none of their own")?;
    if crate::remote::is_url(&job.output_dir) {
        return Err(format!("--output-dir {}: a cluster's jobs write their outputs to a directory (inputs may be on s3://)", shown(&job.output_dir)));
    }
    for path in job.inputs.iter().filter(|path| !crate::remote::is_url(path)).chain([&job.output_dir]).chain(&job.files) {
        if !path.is_absolute() {
            return Err(format!("{}: not an absolute path (the client makes paths absolute before it sends them)", shown(path)));
        }
    }
    check_params(&job.params)?;
    let app = job_app(app)?;
    let inputs = crate::inputs::resolve_inputs(&job.inputs).map_err(|e| e.to_string())?;
    check_map_tasks(&inputs, job.split_size)?;
    let output_dir = real(&normalized(&job.output_dir));
    check_output_dir(&output_dir, &job.inputs, &inputs)?;
    let files = crate::shipped::plan(&submission.job.files)?;
    Ok(Admitted { submission, inputs, app, output_dir, waits_for: Vec::new(), files })
}

/// A job admitted before the cluster restarted, checked again: its app
/// must still load (described afresh: a rebuilt app makes the job start
/// over, as its journal's fingerprint says), and its inputs, as resolved
/// then, still exist. A directory or pattern is not resolved again.
pub fn readmit(mut admitted: Admitted) -> Result<Admitted, String> {
    let app = admitted.submission.job.app.as_deref().ok_or("it names no app")?;
    admitted.app = job_app(app)?;
    if let Some(gone) = admitted.inputs.iter().find(|input| !input_exists(&input.path)) {
        return Err(format!("its input {} is gone", gone.path.display()));
    }
    Ok(admitted)
}

/// Whether an input is still there: a file, or an object (a server that
/// cannot be asked counts as there: the job's reads will tell).
fn input_exists(path: &Path) -> bool {
    if !crate::remote::is_url(path) {
        return path.is_file();
    }
    let Ok(url) = crate::remote::ObjectUrl::parse(&path.to_string_lossy()) else { return false };
    !matches!(crate::remote::head(&url), Ok(None))
}

fn check_params(params: &[(String, String)]) -> Result<(), String> {
    let bytes: usize = params.iter().map(|(key, value)| key.len() + value.len()).sum();
    if params.len() > MAX_PARAMS || bytes > MAX_PARAM_BYTES {
        return Err(format!("at most {MAX_PARAMS} --param, of {} KiB in all", MAX_PARAM_BYTES >> 10));
    }
    Ok(())
}

/// The job's map tasks must be few enough to plan: one per split of
/// `split_size` bytes (one per file for 0).
pub(super) fn check_map_tasks(inputs: &[InputFile], split_size: u64) -> Result<(), String> {
    let tasks: u64 = inputs.iter().map(|input| if split_size == 0 { 1 } else { input.size.div_ceil(split_size).max(1) }).sum();
    if tasks > MAX_MAP_TASKS {
        return Err(format!(
            "{tasks} map tasks (--split-size {split_size} over the inputs) is more than {MAX_MAP_TASKS}: give a larger --split-size"
        ));
    }
    Ok(())
}

/// A new job's output directory must be apart from every unfinished job's
/// (`others`, with their ids): not inside one, not holding one. The same
/// directory is [`check_output_holder`]'s.
pub fn check_apart<'a>(output_dir: &Path, others: impl IntoIterator<Item = (JobId, &'a Path)>) -> Result<(), String> {
    for (id, other) in others {
        if other != output_dir && other.starts_with(output_dir) {
            return Err(format!("output directory {} holds {id}'s, {}", output_dir.display(), other.display()));
        }
        if other != output_dir && output_dir.starts_with(other) {
            return Err(format!("output directory {} is inside {id}'s, {}", output_dir.display(), other.display()));
        }
    }
    Ok(())
}

/// The output directory must be a directory if it exists, and apart from
/// the inputs: not one of them, not inside one given (`given`: a directory
/// walked, say), not holding one found (`inputs`).
fn check_output_dir(output_dir: &Path, given: &[PathBuf], inputs: &[InputFile]) -> Result<(), String> {
    if output_dir.exists() && !output_dir.is_dir() {
        return Err(format!("output directory {}: exists and is not a directory", output_dir.display()));
    }
    // Its nearest existing ancestor must be a directory to make it in.
    if let Some(file) = output_dir.ancestors().skip(1).find(|ancestor| ancestor.exists()).filter(|ancestor| !ancestor.is_dir()) {
        return Err(format!("output directory {}: {} is not a directory", output_dir.display(), file.display()));
    }
    let real_output = real(output_dir);
    let found = inputs.iter().map(|input| &input.path);
    for input in given.iter().filter(|path| path.exists()).chain(found) {
        let real_input = real(input);
        if real_output.starts_with(&real_input) {
            return Err(format!("output directory {} is inside the input {}", output_dir.display(), input.display()));
        }
        if real_input.starts_with(&real_output) {
            return Err(format!("the input {} is inside the output directory {}", input.display(), output_dir.display()));
        }
    }
    Ok(())
}

/// The check that needs the history: `holder` is the job the history says
/// holds `output_dir` (queued, running, or finished with its outputs
/// there). Outputs no job of this cluster wrote are refused too, unless
/// `overwrite`.
pub fn check_output_holder(output_dir: &Path, holder: Option<(JobId, JobState)>, overwrite: bool) -> Result<(), String> {
    let dir = output_dir.display();
    match holder {
        Some((id, state)) if !state.is_final() => Err(format!("output directory {dir} is {id}'s, which is {state}: give another --output-dir")),
        Some((id, _)) if !overwrite => {
            Err(format!("output directory {dir} holds the outputs of {id}: give another --output-dir, or --overwrite to replace them"))
        }
        None if !overwrite && crate::job_dir::earlier_outputs(output_dir).is_some() => Err(format!(
            "output directory {dir} holds the outputs of a job this cluster did not run: give another --output-dir, or --overwrite to replace them"
        )),
        _ => Ok(()),
    }
}

/// `path` without `.` and `..` components, as far as words can tell
/// (symbolic links are resolved by [`real`] where it matters).
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` with symbolic links resolved as far as it exists: the longest
/// existing ancestor canonicalized, the rest appended.
pub(super) fn real(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut existing = path;
    loop {
        if let Ok(real) = existing.canonicalize() {
            return missing.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

/// A path from a peer, cut and escaped for a message.
fn shown(path: &Path) -> String {
    excerpt(&path.to_string_lossy(), EXCERPT_CHARS)
}

/// What the job's engine is planned from.
pub fn coordinator_config(admitted: &Admitted) -> CoordinatorConfig {
    let job = &admitted.submission.job;
    CoordinatorConfig {
        inputs: admitted.inputs.clone(),
        split_bytes: job.split_size,
        reduces: job.reduces,
        output_dir: admitted.output_dir.clone(),
        object_storage: None,
        scheduler: job.scheduler_config(),
        params: crate::Params::new(job.params.clone()),
        map_buffer_bytes: job.map_buffer,
        combine: !job.no_combine,
        compression: job.compress,
        output_compression: job.output_compression,
        files: admitted.files.clone(),
        fresh: false,
        app: Some(admitted.app.clone()),
        // The cluster's listener checks the secret; the engine has none.
        secret: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_by_their_words() {
        assert_eq!(normalized(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalized(Path::new("/a/b/")), PathBuf::from("/a/b"));
    }

    #[test]
    fn an_output_directory_apart_from_the_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let input_dir = dir.path().join("in");
        std::fs::create_dir(&input_dir).unwrap();
        std::fs::write(input_dir.join("a.txt"), "a\n").unwrap();
        let given = [input_dir.clone()];
        let inputs = crate::inputs::resolve_inputs(&given).unwrap();
        assert!(check_output_dir(&dir.path().join("out"), &given, &inputs).is_ok());
        let inside = check_output_dir(&input_dir.join("out"), &given, &inputs).unwrap_err();
        assert!(inside.contains("is inside the input"), "{inside}");
        let holding = check_output_dir(dir.path(), &given, &inputs).unwrap_err();
        assert!(holding.contains("is inside the output directory"), "{holding}");
        let file = check_output_dir(&input_dir.join("a.txt"), &[], &[]).unwrap_err();
        assert!(file.contains("is not a directory"), "{file}");
        let under_file = check_output_dir(&input_dir.join("a.txt/out"), &[], &[]).unwrap_err();
        assert!(under_file.contains("a.txt is not a directory"), "{under_file}");
        // A symbolic link names the directory it points to.
        std::os::unix::fs::symlink(&input_dir, dir.path().join("alias")).unwrap();
        let through_link = check_output_dir(&real(&dir.path().join("alias/out")), &given, &inputs).unwrap_err();
        assert!(through_link.contains("is inside the input"), "{through_link}");
    }

    #[test]
    fn output_directories_of_unfinished_jobs_do_not_nest() {
        let (a, b) = (Path::new("/data/out"), Path::new("/data/out/sub"));
        assert!(check_apart(a, [(JobId(1), Path::new("/data/other"))]).is_ok());
        assert!(check_apart(a, [(JobId(1), a)]).is_ok(), "the same directory is the holder check's");
        assert!(check_apart(a, [(JobId(2), b)]).unwrap_err().contains("holds job-2's"));
        assert!(check_apart(b, [(JobId(3), a)]).unwrap_err().contains("inside job-3's"));
    }

    #[test]
    fn a_job_too_large_to_plan_is_refused() {
        let input = |size| InputFile { name: "x".into(), path: "/x".into(), size, modified: None };
        assert!(check_map_tasks(&[input(1 << 30)], 64 << 20).is_ok());
        assert!(check_map_tasks(&[input(1 << 30)], 1).unwrap_err().contains("--split-size"));
        assert!(check_map_tasks(&[input(1 << 30)], 0).is_ok());
        assert!(check_params(&[("k".into(), "v".repeat(2 << 20))]).is_err());
    }

    #[test]
    fn another_jobs_output_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        assert!(check_output_holder(out, None, false).is_ok());
        let running = check_output_holder(out, Some((JobId(3), JobState::Running)), true).unwrap_err();
        assert!(running.contains("job-3") && running.contains("running"), "{running}");
        let finished = check_output_holder(out, Some((JobId(4), JobState::Succeeded)), false).unwrap_err();
        assert!(finished.contains("--overwrite"), "{finished}");
        assert!(check_output_holder(out, Some((JobId(4), JobState::Succeeded)), true).is_ok());
        std::fs::write(out.join("mr-out-0"), "x 1\n").unwrap();
        let foreign = check_output_holder(out, None, false).unwrap_err();
        assert!(foreign.contains("did not run"), "{foreign}");
        assert!(check_output_holder(out, None, true).is_ok());
    }
}
