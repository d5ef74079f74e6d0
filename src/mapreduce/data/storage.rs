//! Where a worker keeps what its attempts make, and how it gets what they
//! need from other processes when it shares no filesystem with them.
//!
//! Every worker has a work directory of its own and serves files from it
//! ([`crate::files`]). A worker that sees the coordinator's job directory
//! (a shared filesystem; checked once, by finding the job's journal there)
//! writes map outputs and staged reduce outputs into the job directory as
//! well, so that they outlive it and reducers read them in place; one that
//! does not writes them to its work directory and serves them:
//!
//! - a map's runs are reported as served by this worker
//!   ([`MapOutputLocation::Served`]), with their path in the job directory
//!   when they are there;
//! - a reducer reads a run in place when it can (its own output, or one in
//!   the shared job directory) and otherwise fetches it from the map's
//!   worker into its work directory, a bounded number at once, each tried
//!   a few times: one that cannot be fetched is reported lost, and that map
//!   is run again;
//! - a reduce's output goes to the coordinator as it is written, and is
//!   staged in the job directory there ([`crate::upload`]);
//! - an input file this worker cannot read is fetched from the
//!   coordinator, the split's lines only.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;

use futures::StreamExt;

use crate::files::{Catalog, FetchError, Fetcher, FileRange, FileRequest};
use crate::map_output::{open_run, MapOutputLocation};
use crate::output::{AtomicFile, OutputCompression};
use crate::plugin::{file_sha256, Plugin};
use crate::rpc::{AttemptId, InputFile, InputSplit, JobApp, MapTask, ReduceTask, ShippedFile};
use crate::runfile::{RunError, RunRange, RunReader};
use crate::secure::Blocking;
use crate::upload::{Upload, SERVICE_UPLOAD};

/// Runs one reduce fetches at once.
const PARALLEL_FETCHES: usize = 4;
/// Tries at one fetch before its map output counts as lost.
const FETCH_TRIES: u32 = 3;
/// Pause before the second try; doubled for each one after.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The files a worker serves: its map attempts' outputs, by attempt.
#[derive(Debug, Default)]
pub struct ServedOutputs(Mutex<HashMap<AttemptId, PathBuf>>);

impl ServedOutputs {
    /// Serves `path` as map `attempt`'s output.
    pub fn insert(&self, attempt: AttemptId, path: PathBuf) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(attempt, path);
    }

    /// The output file of map `attempt`, if this worker serves it.
    pub fn get(&self, attempt: AttemptId) -> Option<PathBuf> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&attempt).cloned()
    }
}

impl Catalog for ServedOutputs {
    fn resolve(&self, request: &FileRequest) -> Result<FileRange, String> {
        let FileRequest::AttemptOutput { attempt, offset, len } = *request else {
            return Err("a worker serves only its attempts' outputs".into());
        };
        let path = self.get(attempt).ok_or_else(|| format!("attempt {attempt} made no output here"))?;
        let size = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        let len = if len == u64::MAX { size.saturating_sub(offset) } else { len };
        Ok(FileRange { path, offset, len })
    }
}

/// A worker's storage: see the module docs.
pub struct WorkerStorage {
    work_dir: PathBuf,
    /// The coordinator's job directory, when this worker sees it.
    shared_job_dir: Option<PathBuf>,
    /// This worker's file server, as other processes reach it.
    server: String,
    served: Arc<ServedOutputs>,
    fetcher: Fetcher,
    /// Fetches runs from other workers: gives up on a silent one within
    /// the task timeout, so that a frozen worker's output counts as lost
    /// before the reduce that waits for it counts as stalled.
    run_fetcher: Fetcher,
    /// The coordinator, which serves the inputs.
    master: String,
    /// The job's inputs, in the job's order: how the coordinator
    /// numbers them when asked for one.
    inputs: Vec<InputFile>,
    /// Bytes of runs one reduce attempt fetches into memory, at most; it
    /// fetches the rest into files. Merging a run from memory saves writing
    /// it to the disk and reading it back (and the disk's own work).
    fetch_memory: u64,
    /// Runs the fetches, from the slot threads.
    runtime: tokio::runtime::Handle,
}

/// What a worker's storage is made of.
pub struct StorageConfig {
    /// The worker's own directory (empty, and removed by the caller).
    pub work_dir: PathBuf,
    /// The job directory, if this worker sees it.
    pub shared_job_dir: Option<PathBuf>,
    /// The worker's file server's address.
    pub server: String,
    /// What the file server serves.
    pub served: Arc<ServedOutputs>,
    /// How to fetch from other processes.
    pub fetcher: Fetcher,
    /// How long a run's fetch waits for a silent worker.
    pub run_stall_limit: Duration,
    /// The coordinator's address.
    pub master: String,
    /// The job's inputs.
    pub inputs: Vec<InputFile>,
    /// Bytes of runs one reduce attempt fetches into memory, at most.
    pub fetch_memory: u64,
    /// The runtime that runs fetches.
    pub runtime: tokio::runtime::Handle,
}

impl WorkerStorage {
    /// Storage as configured.
    pub fn new(config: StorageConfig) -> WorkerStorage {
        WorkerStorage {
            work_dir: config.work_dir,
            shared_job_dir: config.shared_job_dir,
            server: config.server,
            served: config.served,
            run_fetcher: config.fetcher.clone().with_stall_limit(config.run_stall_limit),
            fetcher: config.fetcher,
            master: config.master,
            inputs: config.inputs,
            fetch_memory: config.fetch_memory,
            runtime: config.runtime,
        }
    }

    /// Whether this worker writes into the shared job directory.
    pub fn shares_job_dir(&self) -> bool {
        self.shared_job_dir.is_some()
    }

    /// Points a map attempt's files (its output, its record cursor) here:
    /// into the work directory unless this worker shares the job directory.
    /// (The coordinator cannot read a cursor in the work directory: records
    /// are then not skipped.)
    pub fn adapt_map(&self, task: &mut MapTask) {
        if !self.shares_job_dir() {
            task.job_dir = self.work_dir.clone();
        }
        if let Some(plan) = &mut task.skip {
            plan.cursor = self.in_work_dir_unless_shared(&plan.cursor);
        }
    }

    /// Points a reduce attempt's record cursor here, as
    /// [`WorkerStorage::adapt_map`] does. (Its output keeps the
    /// coordinator's staged path: see [`WorkerStorage::create_reduce_output`].)
    pub fn adapt_reduce(&self, task: &mut ReduceTask) {
        if let Some(plan) = &mut task.skip {
            plan.cursor = self.in_work_dir_unless_shared(&plan.cursor);
        }
    }

    /// Where a reduce attempt's merge writes its scratch runs: beside its
    /// staged output, or in the work directory unless this worker shares
    /// the job directory.
    pub fn scratch_prefix(&self, task: &ReduceTask) -> PathBuf {
        self.in_work_dir_unless_shared(&task.staged_output)
    }

    fn in_work_dir_unless_shared(&self, path: &Path) -> PathBuf {
        match (&self.shared_job_dir, path.file_name()) {
            (None, Some(name)) => self.work_dir.join(name),
            _ => path.to_owned(),
        }
    }

    /// Serves map `attempt`'s runs, written by this process, and returns
    /// their locations as the report names them.
    pub fn serve_map_output(&self, attempt: AttemptId, runs: Vec<(u32, MapOutputLocation)>) -> Vec<(u32, MapOutputLocation)> {
        let mut registered = false;
        runs.into_iter()
            .map(|(partition, location)| {
                let MapOutputLocation::SharedFile { path, range } = location else { return (partition, location) };
                if !registered {
                    self.served.insert(attempt, path.clone());
                    registered = true;
                }
                let shared_path = self.shares_job_dir().then_some(path);
                (partition, MapOutputLocation::Served { server: self.server.clone(), attempt, range, shared_path })
            })
            .collect()
    }

    /// The output file of map `attempt`, if it was served here.
    pub fn served(&self, attempt: AttemptId) -> Option<PathBuf> {
        self.served.get(attempt)
    }

    /// Serves `path` as map `attempt`'s output: a file a task process
    /// wrote (the worker serves it), or one the worker serves (a task
    /// process reads it in place).
    pub fn serve(&self, attempt: AttemptId, path: PathBuf) {
        self.served.insert(attempt, path);
    }

    /// Whether `path` may be served: a file in the work directory or the
    /// shared job directory, where attempts write (a task process's word
    /// is not taken for more).
    pub fn may_serve(&self, path: &Path) -> bool {
        lies_under(path, &self.work_dir) || self.shared_job_dir.as_deref().is_some_and(|dir| lies_under(path, dir))
    }

    /// The output files of the map attempts among `runs` that this worker
    /// serves: a reduce's task process reads them in place.
    pub fn local_outputs(&self, runs: &[(u32, MapOutputLocation)]) -> Vec<(AttemptId, PathBuf)> {
        let mut local: Vec<(AttemptId, PathBuf)> = runs
            .iter()
            .filter_map(|(_, location)| match location {
                MapOutputLocation::Served { server, attempt, .. } if *server == self.server => self.served.get(*attempt).map(|p| (*attempt, p)),
                _ => None,
            })
            .collect();
        local.sort_unstable();
        local.dedup();
        local
    }

    /// Starts reduce `task`'s output (see [`WorkerStorage::create_output`]).
    pub fn create_reduce_output(&self, task: &ReduceTask, compression: OutputCompression) -> io::Result<AtomicFile> {
        self.create_output(task.partition, task.attempt, &task.staged_output, compression)
    }

    /// Starts output `r` of the job, written by `attempt` (a reduce's, or a
    /// map-only job's map's): a file staged at `staged_output` in the job
    /// directory if this worker shares it, else an upload to the
    /// coordinator, which stages it there as it arrives
    /// ([`crate::upload`]). Either way, once committed it is at
    /// `staged_output`, as the coordinator names it, compressed as
    /// `compression` says.
    pub fn create_output(&self, r: u32, attempt: AttemptId, staged_output: &Path, compression: OutputCompression) -> io::Result<AtomicFile> {
        if self.shares_job_dir() {
            return AtomicFile::create_compressed(staged_output, compression);
        }
        let stream = self
            .runtime
            .block_on(self.fetcher.dial(&self.master, SERVICE_UPLOAD))
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, format!("connecting to the coordinator to send the output: {e}")))?;
        let upload = Upload::start(Blocking::new(stream, self.runtime.clone()), r, attempt)?;
        AtomicFile::staged_in(Box::new(upload), compression)
    }

    /// Makes every run of a reduce attempt readable here: those it can
    /// read in place stay as they are; the others are fetched, into memory
    /// up to `--fetch-memory` bytes in all and into the work directory
    /// past that. The fetched files are removed when the returned guard is
    /// dropped. `Err` names the first map whose output could not be had,
    /// or is `None` if `progress` was cancelled meanwhile.
    pub fn localize(
        &self,
        reduce_attempt: AttemptId,
        runs: &[(u32, MapOutputLocation)],
        progress: FetchProgress<'_>,
    ) -> Result<(LocalRuns, FetchedRuns), Option<(u32, RunError)>> {
        let mut local = Vec::with_capacity(runs.len());
        let mut remote = Vec::new();
        let mut in_memory = 0;
        for (i, (map_task, location)) in runs.iter().enumerate() {
            match self.in_place(location) {
                Some(location) => local.push(Some((*map_task, LocalRun::File(location)))),
                None => {
                    local.push(None);
                    let len = crate::map_output::stored_size(location);
                    let dest = if in_memory + len <= self.fetch_memory {
                        in_memory += len;
                        None
                    } else {
                        Some(self.fetched_path(reduce_attempt, *map_task))
                    };
                    remote.push((i, *map_task, location.clone(), dest));
                }
            }
        }
        let fetched = FetchedRuns(remote.iter().filter_map(|(_, _, _, dest)| dest.clone()).collect());
        let fetches = futures::stream::iter(remote.into_iter().map(|(i, map_task, location, dest)| async move {
            self.fetch_run(&location, dest.as_deref(), progress.units).await.map(|run| (i, map_task, run)).map_err(|e| (map_task, e))
        }))
        .buffer_unordered(PARALLEL_FETCHES)
        .collect::<Vec<_>>();
        let results = self.runtime.block_on(async {
            tokio::select! {
                results = fetches => Some(results),
                () = cancelled(progress.cancelled) => None,
            }
        });
        let results = results.ok_or(None)?;
        let (count, to_files) = (results.len(), fetched.0.len());
        for result in results {
            let (i, map_task, run) = result.map_err(Some)?;
            local[i] = Some((map_task, run));
        }
        if count > 0 {
            tracing::debug!("fetched {count} runs from other workers: {} into memory ({in_memory} bytes), {to_files} into files", count - to_files);
        }
        Ok((local.into_iter().map(|run| run.expect("every run is local or fetched")).collect(), fetched))
    }

    /// The location to read `location` at without fetching, if there is one.
    fn in_place(&self, location: &MapOutputLocation) -> Option<MapOutputLocation> {
        match location {
            MapOutputLocation::SharedFile { .. } => Some(location.clone()),
            MapOutputLocation::Served { shared_path: Some(path), range, .. } if self.shares_job_dir() => {
                Some(MapOutputLocation::SharedFile { path: path.clone(), range: *range })
            }
            MapOutputLocation::Served { server, attempt, range, .. } if *server == self.server => {
                self.served.get(*attempt).map(|path| MapOutputLocation::SharedFile { path, range: *range })
            }
            MapOutputLocation::Served { .. } => None,
        }
    }

    fn fetched_path(&self, reduce_attempt: AttemptId, map_task: u32) -> PathBuf {
        self.work_dir.join(format!("fetched-{reduce_attempt}-map-{map_task}"))
    }

    /// Fetches the served run at `location` into the file `dest`, or into
    /// memory if there is none, trying a few times.
    async fn fetch_run(&self, location: &MapOutputLocation, dest: Option<&Path>, units: &AtomicU64) -> Result<LocalRun, RunError> {
        let MapOutputLocation::Served { server, attempt, range, .. } = location else {
            unreachable!("only served runs are fetched");
        };
        let request = FileRequest::AttemptOutput { attempt: *attempt, offset: range.offset, len: range.len };
        let mut pause = FIRST_RETRY_PAUSE;
        let mut tries = 0;
        loop {
            tries += 1;
            let result = async {
                match dest {
                    Some(dest) => {
                        let mut file = Ticking { inner: tokio::fs::File::create(dest).await?, units };
                        self.run_fetcher.fetch(server, request, &mut file).await?;
                        Ok::<_, FetchError>(LocalRun::File(MapOutputLocation::SharedFile {
                            path: dest.to_owned(),
                            range: RunRange { offset: 0, len: range.len },
                        }))
                    }
                    None => {
                        let mut bytes = Vec::new();
                        self.run_fetcher.fetch_to_vec(server, request, &mut bytes, Some(units)).await?;
                        Ok(LocalRun::Fetched(Arc::new(bytes), PathBuf::from(format!("{server}/attempt-{attempt}"))))
                    }
                }
            };
            match result.await {
                Ok(run) => return Ok(run),
                Err(e) if e.is_transient() && tries < FETCH_TRIES => {
                    tracing::debug!("fetching map attempt {attempt}'s run from {server} (try {tries}): {e}");
                    // Trying again is progress: the reduce is not stuck.
                    units.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    let source = io::Error::other(format!("fetching it from {server} failed after {tries} tries: {e}"));
                    return Err(RunError::Io { path: PathBuf::from(format!("{server}/attempt-{attempt}")), source });
                }
            }
        }
    }

    /// The coordinator's number for the input at `path`, if reading it here
    /// failed with `error` because the file is not here (missing, or not
    /// readable by this worker): then the coordinator is asked for it.
    pub fn served_input(&self, path: &Path, error: &io::Error) -> Option<u32> {
        if !matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied) {
            return None;
        }
        self.inputs.iter().position(|input| input.path == path).and_then(|i| u32::try_from(i).ok())
    }

    /// Fetches the lines `split` of input number `input` owns from the
    /// coordinator into `contents` (cleared first); returns the file offset
    /// at which they begin.
    pub fn fetch_input(&self, input: u32, split: &InputSplit, contents: &mut Vec<u8>) -> Result<u64, FetchError> {
        let request = FileRequest::InputSplit { input, start: split.start, end: split.end.unwrap_or(u64::MAX) };
        contents.clear();
        let fetched = self.runtime.block_on(self.fetcher.fetch_to_vec(&self.master, request, contents, None))?;
        Ok(fetched.offset)
    }
}

/// How a reduce attempt's fetches show progress, and learn the attempt
/// was cancelled (see [`crate::task::TaskProgress`]).
#[derive(Clone, Copy)]
pub struct FetchProgress<'a> {
    /// Ticked for every piece of a run received.
    pub units: &'a AtomicU64,
    /// Set when the attempt no longer matters.
    pub cancelled: &'a AtomicBool,
}

/// Completes once `flag` is set.
async fn cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A writer that ticks `units` for every write, so that a long fetch
/// shows as progress, not as a stuck attempt.
struct Ticking<'a, W> {
    inner: W,
    units: &'a AtomicU64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Ticking<'_, W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.units.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl WorkerStorage {
    /// Fetches the job's app plugin from the coordinator into the work
    /// directory, checks it is the job's (its size and SHA-256), and loads it.
    pub async fn fetch_app(&self, app: &JobApp) -> Result<Plugin, String> {
        let dest = self.work_dir.join(Path::new(&app.file_name).file_name().unwrap_or("app.so".as_ref()));
        let what = format!("the job's app {}", app.file_name);
        self.fetch_checked(FileRequest::Plugin { size: app.size }, &dest, &what, app.size, &app.sha256).await?;
        Plugin::load(&dest).map_err(|e| e.to_string())
    }

    /// Fetches shipped file number `index` (`file`) from the coordinator to
    /// `dest` and checks it is the job's (its size and SHA-256).
    pub async fn fetch_shipped(&self, index: u32, file: &ShippedFile, dest: &Path) -> Result<(), String> {
        let what = format!("the shipped file {}", file.name);
        self.fetch_checked(FileRequest::Shipped { index, size: file.size }, dest, &what, file.size, &file.sha256).await
    }

    /// Fetches what `request` asks the coordinator for to `dest` and checks
    /// it is what the job describes: `size` bytes with hash `sha256`.
    /// `what` names it in errors.
    async fn fetch_checked(&self, request: FileRequest, dest: &Path, what: &str, size: u64, sha256: &str) -> Result<(), String> {
        let fetch = async {
            let mut sink = tokio::fs::File::create(dest).await?;
            self.fetcher.fetch(&self.master, request, &mut sink).await?;
            // A tokio file finishes its last write in the background.
            tokio::io::AsyncWriteExt::flush(&mut sink).await?;
            Ok::<(), FetchError>(())
        };
        fetch.await.map_err(|e| format!("fetching {what} from the coordinator: {e}"))?;
        // Hashing up to a GiB is not for the runtime's threads.
        let path = dest.to_owned();
        let measured = tokio::task::spawn_blocking(move || Ok::<_, io::Error>((std::fs::metadata(&path)?.len(), file_sha256(&path)?))).await;
        let (found_size, found_sha256) = measured.map_err(|e| e.to_string())?.map_err(|e| format!("{}: {e}", dest.display()))?;
        if found_size != size || found_sha256 != sha256 {
            return Err(format!(
                "{what} fetched from the coordinator has {found_size} bytes and sha256 {found_sha256}, not the job's {size} and {sha256}"
            ));
        }
        Ok(())
    }

    /// Up to `len` bytes at `offset` of input number `input`, for the app's
    /// constructor: from the file if this worker can open it, else from the
    /// coordinator. Called off the runtime.
    pub fn read_input(&self, input: u32, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let file = self.inputs.get(input as usize).ok_or("no such input")?;
        let mut bytes = Vec::new();
        match crate::input_store::store_for(&file.path).read_range(file, offset..offset.saturating_add(len), &mut bytes) {
            Ok(()) => Ok(bytes),
            Err(e) if self.served_input(&file.path, &e).is_none() => Err(format!("{}: {e}", file.path.display())),
            Err(_) => {
                bytes.clear();
                let request = FileRequest::InputRange { input, offset, len };
                self.runtime
                    .block_on(self.fetcher.fetch_to_vec(&self.master, request, &mut bytes, None))
                    .map_err(|e| format!("{} is not readable here, and fetching it from the coordinator failed: {e}", file.path.display()))?;
                Ok(bytes)
            }
        }
    }
}

/// A run a reduce attempt can read here.
pub enum LocalRun {
    /// In a file: read in place, or fetched into the work directory.
    File(MapOutputLocation),
    /// Fetched into memory; the path says where from, for errors.
    Fetched(Arc<Vec<u8>>, PathBuf),
}

impl LocalRun {
    /// Opens the run for reading.
    pub fn open(&self) -> Result<RunReader, RunError> {
        match self {
            LocalRun::File(location) => open_run(location),
            LocalRun::Fetched(bytes, from) => RunReader::from_memory(bytes.clone(), from),
        }
    }
}

/// A reduce's runs, readable here, each with its map task.
pub type LocalRuns = Vec<(u32, LocalRun)>;

/// Run files fetched for one reduce attempt: removed when dropped.
#[must_use]
pub struct FetchedRuns(Vec<PathBuf>);

impl Drop for FetchedRuns {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether `path` lies under `dir`, as written (no `..` to climb out).
fn lies_under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) && !path.components().any(|c| c == std::path::Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_a_directory_lie_under_it() {
        assert!(lies_under(Path::new("/w/mr-worker-x/map-1"), Path::new("/w/mr-worker-x")));
        assert!(!lies_under(Path::new("/w/mr-worker-x/../etc/passwd"), Path::new("/w/mr-worker-x")));
        assert!(!lies_under(Path::new("/etc/passwd"), Path::new("/w/mr-worker-x")));
    }
}
