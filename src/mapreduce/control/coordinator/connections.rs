//! The job's side of the connection shell: serving one connection that a
//! listener has accepted and authenticated
//! ([`JobHandle::serve_connection`]). The service byte routes it (RPC,
//! files or an upload); the worker id its handshake named is claimed for
//! the job while it is open; [`OpenConnection`]'s end tells the engine
//! that its worker is gone ([`worker_disconnected`]). Nothing here decides
//! about tasks, and nothing here belongs to a listener: the connection
//! budget, the handshake and its refusal log are the listener's (the
//! one-job [`super::listener`], or the standing cluster's, which serves
//! many jobs behind one port).
//!
//! What is the job's: the claims on worker ids (a worker id belongs to one
//! process at a time, per job), the count of open connections (the job's
//! end waits for them), the idle limit (twice the job's task timeout), and
//! closing every connection once the job is over (`Shared::closed`), which
//! ends [`JobHandle::serve_connection`] however the connection came in.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;

use crate::accept::IdleLimited;
use crate::files;
use crate::handshake::Identity;
use crate::rpc::{Coordinator, WorkerId};
use crate::scheduler::Owner;
use crate::secure::{Blocking, Stream};
use crate::upload;

use super::engine::{lock, refused, worker_disconnected, Shared};
use super::service::CoordinatorServer;
use super::uploads::take_upload;
use super::JobHandle;

/// The shortest time a connection may send nothing before it is closed.
pub(super) const MIN_IDLE_LIMIT: Duration = Duration::from_secs(2);

/// Why [`JobHandle::serve_connection`] did not serve a connection; the
/// connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionRefused {
    /// Another process (another incarnation of the same id) holds the
    /// worker id on a connection open to this job now.
    #[error("the worker id {worker} belongs to another process connected now")]
    WorkerIdTaken {
        /// The worker id the connection's handshake named.
        worker: WorkerId,
    },
    /// The job is over and has closed its connections.
    #[error("the job is over")]
    JobClosed,
}

impl JobHandle {
    /// Serves one connection to this job whose handshake the caller ran
    /// (so `identity` is proven, with the caller's secret if it has one),
    /// until it closes or the job closes its connections: reads the service
    /// byte (`R`, `F` or `U`) and serves it as the job's own listener does,
    /// with the job's idle limit; a panic in it costs the connection only.
    ///
    /// The worker id is claimed for the job while the connection is open
    /// (the connections of one worker id must come from one process); an
    /// RPC connection whose worker called, closing as the worker's last,
    /// means the worker is gone. The caller keeps its own bookkeeping (a
    /// connection budget's permit) until this returns.
    pub async fn serve_connection(&self, stream: Stream, identity: Identity, peer: String) -> Result<(), ConnectionRefused> {
        let open = OpenConnection::claim(&self.0, &identity).inspect_err(|e| {
            refused(&self.0, &Owner::new(&identity.name, identity.incarnation), "a connection", &format!("{e} (from {peer})"));
        })?;
        self.serve_open(stream, open, peer).await
    }

    /// [`JobHandle::serve_connection`] for a connection whose worker id is
    /// claimed already (during the handshake, by the one-job listener).
    pub(super) async fn serve_open(&self, stream: Stream, open: OpenConnection, peer: String) -> Result<(), ConnectionRefused> {
        let shared = &self.0;
        let mut closed = shared.closed.subscribe();
        if *closed.borrow_and_update() {
            return Err(ConnectionRefused::JobClosed);
        }
        contain_panics("a connection", async {
            tokio::select! {
                () = serve_service(shared, stream, open, peer) => {}
                _ = closed.wait_for(|closed| *closed) => {}
            }
        })
        .await;
        Ok(())
    }
}

/// Reads the service byte that follows the handshake and serves it.
async fn serve_service(shared: &Arc<Shared>, stream: Stream, open: OpenConnection, peer: String) {
    let mut stream = IdleLimited::new(stream, shared.idle_limit);
    match tokio::io::AsyncReadExt::read_u8(&mut stream).await {
        Ok(files::SERVICE_RPC) => {}
        Ok(upload::SERVICE_UPLOAD) => {
            let owner = open.owner.clone();
            drop(open);
            // Not idle-limited: an upload waits for its reduce as long as
            // the attempt runs.
            let (shared, runtime) = (shared.clone(), tokio::runtime::Handle::current());
            let stream = Blocking::new(stream.into_inner(), runtime);
            let taken = tokio::task::spawn_blocking(move || take_upload(&shared, &owner, stream)).await;
            if let Ok(Err(e)) = taken {
                tracing::debug!("taking an output from {peer}: {e}");
            }
            return;
        }
        Ok(files::SERVICE_FILES) => {
            // Fetching files says nothing of the worker's liveness: the
            // claim on its id is the RPC connection's alone.
            drop(open);
            if let Err(e) = files::serve_requests(stream, shared.files.clone()).await {
                tracing::debug!("serving files to {peer}: {e}");
            }
            return;
        }
        _ => return,
    }
    let open = Arc::new(open);
    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
    let server = CoordinatorServer {
        shared: shared.clone(),
        peer: Some(peer),
        worker: open.owner.worker.clone(),
        owner: open.owner.clone(),
        connection: open.clone(),
    };
    // Requests run inside this future, not spawned, so that dropping it
    // cancels them all.
    BaseChannel::with_defaults(transport)
        .execute(server.serve())
        .for_each_concurrent(None, |request| contain_panics("an RPC handler", request))
        .await;
}

/// Runs `future`, catching a panic in it: a bug that a peer's message
/// reaches must cost that message (or its connection), never the
/// coordinator. The state it leaves is still the best record of the job
/// (see [`lock`]).
pub async fn contain_panics(what: &str, future: impl Future<Output = ()>) {
    use futures::FutureExt;
    if let Err(payload) = std::panic::AssertUnwindSafe(future).catch_unwind().await {
        tracing::error!("{what} panicked (a bug; the coordinator goes on): {}", crate::abi::panic_message(payload.as_ref()));
    }
}

/// Gives `identity` its worker id for one more connection, unless another
/// process (another incarnation) holds it on an open connection.
fn claim_worker_id(shared: &Shared, identity: &Identity) -> Result<(), ConnectionRefused> {
    let mut claims = lock(&shared.claims);
    match claims.get_mut(&identity.name) {
        Some(claim) if claim.incarnation != identity.incarnation => Err(ConnectionRefused::WorkerIdTaken { worker: identity.name.clone() }),
        Some(claim) => {
            claim.connections += 1;
            Ok(())
        }
        None => {
            claims.insert(identity.name.clone(), Claim { incarnation: identity.incarnation, connections: 1 });
            Ok(())
        }
    }
}

/// Gives back one connection's claim on `worker`'s id; true if it was the
/// last (the id is free again).
fn release_worker_id(shared: &Shared, worker: &str) -> bool {
    let mut claims = lock(&shared.claims);
    let Some(claim) = claims.get_mut(worker) else { return true };
    claim.connections -= 1;
    if claim.connections > 0 {
        return false;
    }
    claims.remove(worker);
    true
}

/// The process (by its handshake's incarnation) that holds a worker id,
/// and on how many open connections.
pub(super) struct Claim {
    incarnation: [u8; 16],
    connections: usize,
}

/// A connection admitted to the job, from the worker its handshake named:
/// it holds a claim on the worker id and is counted in
/// [`Shared::connections`] while it lives (an RPC connection for its whole
/// life, a file or upload connection until its service byte). When it
/// closes after the worker called, the worker is gone (unless it has
/// another connection open).
pub(super) struct OpenConnection {
    shared: Arc<Shared>,
    /// The worker id with its process's incarnation: who may report the
    /// attempts given on this connection.
    pub(super) owner: Owner,
    /// Whether the worker made a call on this connection (a connection
    /// that only did the handshake says nothing of the worker).
    pub(super) called: AtomicBool,
}

impl OpenConnection {
    /// Claims `identity`'s worker id for one more connection to the job.
    pub(super) fn claim(shared: &Arc<Shared>, identity: &Identity) -> Result<OpenConnection, ConnectionRefused> {
        claim_worker_id(shared, identity)?;
        shared.connections.fetch_add(1, Ordering::AcqRel);
        Ok(OpenConnection { shared: shared.clone(), owner: Owner::new(&identity.name, identity.incarnation), called: false.into() })
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let worker = &self.owner.worker;
        if release_worker_id(&self.shared, worker) && self.called.load(Ordering::Acquire) {
            worker_disconnected(&self.shared, worker);
        }
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
