//! A job's outputs committed to object storage (`--output-dir
//! s3://BUCKET/PREFIX`), where there is no rename to make them appear
//! together.
//!
//! The job runs as any other, its job directory (journal, lock, finished
//! outputs) in a local *staging directory* on the coordinator's machine
//! ([`staging_dir`]). Once every output is done, and the journal says so,
//! [`publish`] commits them, as Hadoop's S3A committers do:
//!
//! 1. each finished output is uploaded to a temporary object,
//!    `PREFIX/_temporary/<job id>/mr-out-<r>`;
//! 2. an earlier job's `PREFIX/_SUCCESS` is deleted (that job's outputs
//!    stop being a whole; only with `--overwrite` is a prefix holding them
//!    used at all);
//! 3. each temporary object is copied to its final key, `PREFIX/mr-out-<r>`,
//!    and an earlier job's `mr-out-<n>` beyond this job's outputs deleted;
//! 4. `PREFIX/_SUCCESS` is written last: the line `job <id>`, then one line
//!    `mr-out-<r> <bytes>` per output, a manifest of the outputs;
//! 5. the temporary objects are deleted.
//!
//! Readers take the outputs as whole once `_SUCCESS` is there. A failure
//! in any step deletes the final objects this publication wrote and the
//! temporary ones, and the job fails naming the URL and the error: a
//! failed or cancelled job leaves no final keys. A coordinator killed
//! midway publishes again when it is restarted (its journal says it was
//! publishing); a coordinator resuming the job first removes the
//! temporary objects its earlier runs left ([`remove_temporary`]).

use std::path::{Path, PathBuf};

use crate::output::{is_output_name, marked_job, output_file_name, success_line, OutputCompression, SUCCESS_MARKER as SUCCESS};
use crate::remote::{self, ObjectUrl, RemoteError};

/// Where temporary objects go, under the output prefix.
const TEMPORARY: &str = "_temporary";

/// The default local staging directory of output prefix `prefix`:
/// `.mr-s3/BUCKET/PREFIX` under the current directory, the same path for
/// the same prefix so that a restarted coordinator finds its job.
pub fn staging_dir(prefix: &ObjectUrl) -> PathBuf {
    let mut dir = PathBuf::from(".mr-s3").join(&prefix.bucket);
    for part in prefix.key.split('/').filter(|part| !part.is_empty()) {
        dir.push(part);
    }
    dir
}

/// Commits the finished outputs `mr-out-0 ..` (`outputs` of them) in
/// `job_dir` to `prefix`, as job `id` (see the module's documentation),
/// named for their `compression`.
pub fn publish(job_dir: &Path, outputs: u32, id: &str, prefix: &ObjectUrl, compression: OutputCompression) -> Result<(), RemoteError> {
    let temporary = prefix.join(TEMPORARY).join(id);
    let mut written = Vec::new();
    let committed = commit(job_dir, outputs, compression, id, prefix, &temporary, &mut written);
    if committed.is_err() {
        for url in written.iter().rev() {
            if let Err(e) = remote::delete(url) {
                tracing::warn!("cannot remove {url} of a failed publication: {e}");
            }
        }
    }
    // The outputs are whole once _SUCCESS is there: a temporary object
    // that cannot be removed then is only litter.
    match (committed, remove_under(&temporary)) {
        (Ok(()), Err(e)) => {
            tracing::warn!("cannot remove the temporary objects under {temporary}: {e}");
            Ok(())
        }
        (committed, _) => committed,
    }
}

fn commit(
    job_dir: &Path,
    outputs: u32,
    compression: OutputCompression,
    id: &str,
    prefix: &ObjectUrl,
    temporary: &ObjectUrl,
    written: &mut Vec<ObjectUrl>,
) -> Result<(), RemoteError> {
    let mut manifest = success_line(id);
    let mut uploaded = Vec::new();
    for r in 0..outputs {
        let name = compression.output_file_name(r);
        let bytes = remote::upload(&job_dir.join(output_file_name(r)), &temporary.join(&name))?;
        manifest.push_str(&format!("{name} {bytes}\n"));
        uploaded.push(name);
    }
    remote::delete(&prefix.join(SUCCESS))?;
    for name in &uploaded {
        let final_url = prefix.join(name);
        written.push(final_url.clone());
        remote::copy(&temporary.join(name), &final_url)?;
    }
    for stale in earlier_output_names(prefix)?.into_iter().filter(|name| !uploaded.contains(name)) {
        remote::delete(&prefix.join(&stale))?;
    }
    let success = prefix.join(SUCCESS);
    written.push(success.clone());
    remote::put(&success, manifest.into_bytes())
}

/// Removes the temporary objects that earlier runs of job `id` left
/// under `prefix` (those of other jobs are theirs: a job that died while
/// publishing leaves its own, which `mr-master --fresh` on it does not
/// reach; they lie under `_temporary/`, which inputs leave out).
pub fn remove_temporary(prefix: &ObjectUrl, id: &str) -> Result<(), RemoteError> {
    remove_under(&prefix.join(TEMPORARY).join(id))
}

fn remove_under(folder: &ObjectUrl) -> Result<(), RemoteError> {
    for object in remote::list(folder)? {
        remote::delete(&object.url)?;
    }
    Ok(())
}

/// The names of the outputs (`mr-out-<n>`) directly under `prefix`.
fn earlier_output_names(prefix: &ObjectUrl) -> Result<Vec<String>, RemoteError> {
    let folder = prefix.key.trim_end_matches('/');
    let names = remote::list(prefix)?.into_iter().filter_map(|object| {
        let name = object.url.key.get(folder.len()..)?.trim_start_matches('/').to_owned();
        is_output_name(&name).then_some(name)
    });
    Ok(names.collect())
}

/// What an earlier job left under `prefix`, as
/// [`crate::job_dir::earlier_outputs`] tells it for a directory: its first
/// output's name, and the job its `_SUCCESS` names.
pub fn earlier_outputs(prefix: &ObjectUrl) -> Result<Option<(String, Option<String>)>, RemoteError> {
    let mut names = earlier_output_names(prefix)?;
    names.sort();
    let Some(first) = names.into_iter().next() else { return Ok(None) };
    let mut marker = Vec::new();
    let job = match remote::head(&prefix.join(SUCCESS))? {
        Some(object) => {
            remote::read_range(&object.url, 0..object.size.min(200), None, &mut marker)?;
            marked_job(&String::from_utf8_lossy(&marker))
        }
        None => None,
    };
    Ok(Some((first, job)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_staged_under_a_path_of_its_own() {
        let prefix = ObjectUrl::parse("s3://data/jobs/wc/").unwrap();
        assert_eq!(staging_dir(&prefix), Path::new(".mr-s3/data/jobs/wc"));
        assert_eq!(staging_dir(&ObjectUrl::parse("s3://data").unwrap()), Path::new(".mr-s3/data"));
    }
}
