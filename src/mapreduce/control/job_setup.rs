//! What a worker sets up for one job before its first task: a work
//! directory of its own, a file server for the map output it keeps there,
//! and its [`WorkerStorage`], which decides whether it shares the job
//! directory with the coordinator; then the message that starts a slot's
//! task process for the job ([`child_start`]). A job's shipped files are
//! fetched here too, before the first task. The one-job worker does
//! this once ([`crate::worker`]); a long-lived worker once per job it
//! works for ([`crate::session`]), since attempt ids, and so the names of
//! attempts' files, are unique only within a job.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::files::Fetcher;
use crate::handshake::{Identity, Secret};
use crate::journal::Journal;
use crate::rpc::JobSpec;
use crate::storage::{ServedOutputs, StorageConfig, WorkerStorage};
use crate::task_protocol::{ChildStart, ChildStorage, PROTOCOL_VERSION};
use crate::work_dir::WorkDir;
use crate::worker_config::{WorkerConfig, WorkerError};

/// The work directory's folder for the job's shipped files (`--files`).
const SHIPPED_DIR: &str = "files";

/// One job's storage on this worker.
pub struct JobStorage {
    /// Where attempts' files go, and what this worker serves.
    pub storage: Arc<WorkerStorage>,
    /// The job's work directory: removed when dropped.
    pub work_dir: WorkDir,
    /// The storage's settings, for the task processes.
    pub child: ChildStorage,
    /// The file server's task: it serves until aborted, or until the
    /// runtime ends.
    pub file_server: tokio::task::JoinHandle<()>,
}

/// The message that starts slot `slot`'s task process for the job `spec`
/// with the app at `plugin`.
pub fn child_start(config: &WorkerConfig, identity: &Identity, spec: &JobSpec, plugin: PathBuf, storage: ChildStorage, slot: usize) -> ChildStart {
    ChildStart {
        version: PROTOCOL_VERSION,
        slot,
        job: spec.clone(),
        plugin,
        identity_name: identity.name.clone(),
        identity_incarnation: identity.incarnation,
        token_file: config.token_file.clone(),
        tls: config.secret.as_ref().is_none_or(Secret::encrypts),
        storage,
        memory: config.slot_memory,
    }
}

/// Makes the work directory, starts the file server, and decides whether
/// this worker shares the coordinator's job directory (it finds the job's
/// journal there). `local` is this end of the connection to the
/// coordinator: the address other workers reach this one at, presumably.
/// `master` is the job's address, `base` where to make the work
/// directory, `serve_on` where to listen (`None`: a free port on `local`'s
/// address). The work directory lives as long as the returned guard, the
/// file server as long as its task (see [`JobStorage::file_server`]).
pub async fn set_up_storage(
    config: &WorkerConfig,
    master: &str,
    base: &Path,
    serve_on: Option<&str>,
    spec: &JobSpec,
    identity: &Identity,
    local: SocketAddr,
) -> Result<JobStorage, WorkerError> {
    let setup = |what: &str, e: std::io::Error| WorkerError::Setup(format!("{what}: {e}"));
    let (work_dir, _) = WorkDir::create(base).map_err(|e| setup(&format!("cannot make a work directory in {}", base.display()), e))?;
    let serve_on = serve_on.map_or_else(|| SocketAddr::new(local.ip(), 0).to_string(), str::to_owned);
    let listener = tokio::net::TcpListener::bind(&serve_on).await.map_err(|e| setup(&format!("cannot serve files on {serve_on}"), e))?;
    let bound = listener.local_addr().map_err(|e| setup("reading the file server's address", e))?;
    // Listening on every address: others reach it where they reach us.
    let server = if bound.ip().is_unspecified() { SocketAddr::new(local.ip(), bound.port()) } else { bound };
    let served = Arc::new(ServedOutputs::default());
    let file_server = tokio::spawn(crate::files::run_server(listener, config.secret.clone(), served.clone()));
    let journal = spec.job_dir.join(crate::job_dir::JOURNAL);
    let shared = config.use_shared_dir && Journal::job_id_at(&journal).as_deref() == Some(spec.job_id.as_str());
    tracing::info!(
        work_dir = %work_dir.path().display(),
        files = %server,
        "{}",
        if shared { "sharing the job directory with the coordinator" } else { "not sharing the job directory: map output is served from here" }
    );
    let mut child = ChildStorage {
        work_dir: work_dir.path().to_owned(),
        shared_job_dir: shared.then(|| spec.job_dir.clone()),
        server: server.to_string(),
        // Two heartbeats: at most half the task timeout.
        run_stall_limit: spec.heartbeat_interval * 2,
        master: master.to_owned(),
        fetch_memory: config.fetch_memory,
        files_dir: None,
    };
    let storage = WorkerStorage::new(StorageConfig {
        work_dir: child.work_dir.clone(),
        shared_job_dir: child.shared_job_dir.clone(),
        server: child.server.clone(),
        served,
        fetcher: Fetcher::new(config.secret.clone(), identity.clone()),
        run_stall_limit: child.run_stall_limit,
        master: master.to_owned(),
        inputs: spec.inputs.clone(),
        fetch_memory: config.fetch_memory,
        runtime: tokio::runtime::Handle::current(),
    });
    if !spec.files.is_empty() {
        // Absolute: the task processes run the app's commands in it.
        let dir = std::path::absolute(work_dir.path().join(SHIPPED_DIR)).map_err(|e| setup("the shipped files' directory", e))?;
        if let Err(e) = crate::shipped::fetch(&storage, &spec.files, &dir).await {
            // A detached server would serve on, unseen.
            file_server.abort();
            return Err(WorkerError::Setup(e));
        }
        tracing::info!(files = spec.files.len(), dir = %dir.display(), "fetched the job's shipped files");
        child.files_dir = Some(dir);
    }
    Ok(JobStorage { storage: Arc::new(storage), work_dir, child, file_server })
}
