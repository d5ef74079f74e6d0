//! The connection shell: the accept loop ([`serve`]), each connection's
//! admission (the handshake and the claim on its worker id), the service
//! byte that routes it (RPC, files or an upload), and [`OpenConnection`],
//! whose end tells the engine that its worker is gone. Nothing here
//! decides about tasks.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::net::TcpListener;

use crate::files;
use crate::handshake::{self, Identity};
use crate::rpc::{Coordinator, WorkerId};
use crate::scheduler::Owner;
use crate::secure::{Blocking, Stream};
use crate::upload;

use super::engine::{forget_outputs_of, lock, JobState, Shared};
use super::service::CoordinatorServer;
use super::uploads::take_upload;

/// The shortest time a connection may send nothing before it is closed.
pub(super) const MIN_IDLE_LIMIT: Duration = Duration::from_secs(2);

/// Accepts connections and runs their requests until an I/O error on the
/// listener. Dropping the future closes every connection.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    crate::accept::incoming(listener, crate::accept::connection_cap())
        .for_each_concurrent(None, |(stream, permit)| {
            let shared = shared.clone();
            contain_panics("a connection", async move {
                let peer = stream.peer_addr().map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
                let Some((stream, open)) = admit(&shared, stream, &peer).await else { return };
                let mut stream = crate::accept::IdleLimited::new(stream, shared.idle_limit);
                // After the handshake, one byte names the service.
                match tokio::io::AsyncReadExt::read_u8(&mut stream).await {
                    Ok(files::SERVICE_RPC) => {}
                    Ok(upload::SERVICE_UPLOAD) => {
                        let owner = open.owner.clone();
                        drop(open);
                        // Not idle-limited: an upload waits for its reduce
                        // as long as the attempt runs.
                        let (shared, runtime) = (shared.clone(), tokio::runtime::Handle::current());
                        let stream = Blocking::new(stream.into_inner(), runtime);
                        let taken = tokio::task::spawn_blocking(move || take_upload(&shared, &owner, stream)).await;
                        if let Ok(Err(e)) = taken {
                            tracing::debug!("taking an output from {peer}: {e}");
                        }
                        drop(permit);
                        return;
                    }
                    Ok(files::SERVICE_FILES) => {
                        // Fetching files says nothing of the worker's
                        // liveness: the claim on its id is the RPC
                        // connection's alone.
                        drop(open);
                        if let Err(e) = files::serve_requests(stream, shared.files.clone()).await {
                            tracing::debug!("serving files to {peer}: {e}");
                        }
                        drop(permit);
                        return;
                    }
                    _ => return,
                }
                let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
                let server = CoordinatorServer {
                    shared: shared.clone(),
                    peer: Some(peer),
                    worker: open.worker.clone(),
                    owner: open.owner.clone(),
                    connection: open.clone(),
                };
                // Requests run inside this future, not spawned, so that dropping
                // the server cancels them all. The permit goes with the connection.
                BaseChannel::with_defaults(transport)
                    .execute(server.serve())
                    .for_each_concurrent(None, |request| contain_panics("an RPC handler", request))
                    .await;
                drop((open, permit));
            })
        })
        .await;
    Ok(())
}

/// Runs `future`, catching a panic in it: a bug that a peer's message
/// reaches must cost that message (or its connection), never the
/// coordinator. The state it leaves is still the best record of the job
/// (see [`lock`]).
async fn contain_panics(what: &str, future: impl Future<Output = ()>) {
    use futures::FutureExt;
    if let Err(payload) = std::panic::AssertUnwindSafe(future).catch_unwind().await {
        tracing::error!("{what} panicked (a bug; the coordinator goes on): {}", crate::abi::panic_message(payload.as_ref()));
    }
}

/// Runs the handshake on a new connection (encrypting it if the job has a
/// secret): the peer must know the job's secret (if it has one), and the
/// worker id it gives must not be held by another process. Refusals are
/// logged, at most one line per 10 s.
async fn admit(shared: &Arc<Shared>, stream: tokio::net::TcpStream, peer: &str) -> Option<(Stream, Arc<OpenConnection>)> {
    // A claim made for a handshake that then fails (the client left before
    // reading its admission) is given back.
    let claimed = std::cell::Cell::new(None);
    let claim = |identity: &Identity| {
        claim_worker_id(shared, identity)?;
        claimed.set(Some(identity.name.clone()));
        Ok(())
    };
    match handshake::accept(stream, shared.secret.as_ref(), claim).await {
        Ok((stream, identity)) => Some((stream, Arc::new(OpenConnection::new(shared, Owner::new(&identity.name, identity.incarnation))))),
        Err(e) => {
            if let Some(worker) = claimed.take() {
                release_worker_id(shared, &worker);
            }
            lock(&shared.refusals).refused(peer, &e);
            None
        }
    }
}

/// Gives `identity` its worker id for one more connection, unless another
/// process (another incarnation) holds it on an open connection.
fn claim_worker_id(shared: &Shared, identity: &Identity) -> Result<(), String> {
    let mut claims = lock(&shared.claims);
    match claims.get_mut(&identity.name) {
        Some(claim) if claim.incarnation != identity.incarnation => {
            Err(format!("the worker id {} belongs to another process connected now", identity.name))
        }
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

/// One RPC connection, from the worker its handshake named: counted in
/// [`Shared::connections`] while it lives. When it closes after the worker
/// called, the worker is gone (unless it has another connection open).
pub(super) struct OpenConnection {
    shared: Arc<Shared>,
    worker: WorkerId,
    /// The worker id with its process's incarnation: who may report the
    /// attempts given on this connection.
    owner: Owner,
    /// Whether the worker made a call on this connection (a connection
    /// that only did the handshake says nothing of the worker).
    pub(super) called: std::sync::atomic::AtomicBool,
}

impl OpenConnection {
    fn new(shared: &Arc<Shared>, owner: Owner) -> OpenConnection {
        shared.connections.fetch_add(1, Ordering::AcqRel);
        OpenConnection { shared: shared.clone(), worker: owner.worker.clone(), owner, called: false.into() }
    }

    /// Releases this connection's claim on the worker id; true if it was
    /// the worker's last open connection.
    fn release_claim(&self) -> bool {
        release_worker_id(&self.shared, &self.worker)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let shared = &self.shared;
        let worker = &self.worker;
        if self.release_claim() && self.called.load(Ordering::Acquire) {
            let mut job = shared.job();
            let JobState { scheduler, status, .. } = &mut *job;
            let now = Instant::now();
            status.worker_disconnected(worker);
            if scheduler.job_end().is_none() {
                for lost in scheduler.worker_disconnected(worker) {
                    tracing::warn!(task = %lost.task, attempt = lost.attempt, %worker, "attempt lost: {}; task will be re-run", lost.loss);
                    status.attempt_lost(lost.task, lost.attempt, lost.loss, now);
                }
                forget_outputs_of(&mut job, worker, "disconnected");
            }
            drop(job);
            shared.not_yet_exited().remove(worker);
            shared.changed.notify_waiters();
        }
        shared.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
