//! The cluster's one listener: every connection to `mr-master --serve`,
//! whichever job it is for, comes in here. It owns what belongs to a
//! listener: the process's connection budget, the handshake with the
//! cluster's secret (its preamble says "cluster", so a worker without an
//! app knows to stay across jobs), and the log of refused handshakes. Then
//! the first byte routes the connection:
//!
//! - [`SERVICE_JOB`] and a job id: the stream goes to that job's engine
//!   ([`JobHandle::serve_connection`](crate::coordinator::JobHandle::serve_connection)),
//!   which reads the job's own service byte (`R`, `F`, `U`) and serves it
//!   as a one-job coordinator does; a job not running closes it.
//! - [`SERVICE_CLUSTER`]: the cluster's API ([`ClusterApi`]) for the `mr`
//!   client and the long-lived workers, answered from the connection's
//!   identity.
//!
//! A worker that joined on a connection leaves when it closes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::accept::IdleLimited;
use crate::cluster::admission::MAX_REQUIRED_LABELS;
use crate::cluster::api::{AgentReply, ClusterApi, JobInfo, JoinOffer, ListFilter, Submission, Welcome, WorkerInfo};
use crate::cluster::queue::JobId;
use crate::cluster::registry::{self, Cluster};
use crate::cluster::workers::Load;
use crate::coordinator::contain_panics;
use crate::handshake::{self, Identity, RefusalLog, Secret, ServerKind};
use crate::memory_budget::WorkerMemory;
use crate::route::{self, SERVICE_CLUSTER, SERVICE_JOB};
use crate::secure::Stream;
use crate::untrusted::{excerpt, EXCERPT_CHARS};

/// How long a connection may take to name its route after the handshake.
const ROUTE_LIMIT: Duration = Duration::from_secs(10);

/// How long an API connection may send nothing before it is closed: a
/// worker calls every heartbeat interval, a client that waits every
/// second or so.
const API_IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Calls one API connection may have answered at once (a submission reads
/// the inputs on a blocking thread; one client must not take them all).
const MAX_CALLS_AT_ONCE: usize = 8;

/// The most jobs a worker's `next_job` may decline (the rest are not
/// looked at).
const MAX_DECLINED: usize = 256;

/// The most slots or cores a worker may say it has.
const MAX_SLOTS: u32 = 4096;

/// Serves `cluster` on `listener` until an I/O error on it; dropping the
/// future closes every connection it accepted.
pub async fn serve(listener: TcpListener, cluster: Arc<Cluster>, secret: Option<Secret>) -> std::io::Result<()> {
    let refusals = Mutex::new(RefusalLog::default());
    crate::accept::incoming(listener, crate::accept::connection_cap())
        .for_each_concurrent(None, |(stream, permit)| {
            let (cluster, secret, refusals) = (&cluster, secret.as_ref(), &refusals);
            contain_panics("a connection", async move {
                let peer = stream.peer_addr().map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
                match handshake::accept_as(ServerKind::Cluster, stream, secret, |_| Ok(())).await {
                    Ok((stream, identity)) => route_connection(cluster, stream, identity, peer).await,
                    Err(e) => refusals.lock().unwrap_or_else(|p| p.into_inner()).refused(&peer, &e),
                }
                drop(permit);
            })
        })
        .await;
    Ok(())
}

/// Reads the route of an authenticated connection and serves it.
async fn route_connection(cluster: &Arc<Cluster>, mut stream: Stream, identity: Identity, peer: String) {
    let routed = tokio::time::timeout(ROUTE_LIMIT, async {
        match stream.read_u8().await? {
            SERVICE_JOB => Ok(Some(JobId(route::read_job(&mut stream).await?))),
            SERVICE_CLUSTER => Ok(None),
            other => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unknown service byte {other}"))),
        }
    })
    .await;
    match routed {
        Ok(Ok(Some(id))) => match cluster.job_handle(id) {
            Some(job) => {
                // Its lines go to the job's log (see `job_logs`).
                let _ = job.serve_connection(stream, identity, peer).instrument(registry::job_span(id)).await;
            }
            None => tracing::debug!("a connection from {peer} for {id}, which is not running: closed"),
        },
        Ok(Ok(None)) => serve_api(cluster, stream, identity).await,
        Ok(Err(e)) => tracing::debug!("a connection from {peer} named no route: {e}"),
        Err(_) => tracing::debug!("a connection from {peer} named no route in {} s", ROUTE_LIMIT.as_secs()),
    }
}

/// Serves the cluster's API on one connection until it closes.
async fn serve_api(cluster: &Arc<Cluster>, stream: Stream, identity: Identity) {
    let stream = IdleLimited::new(stream, API_IDLE_LIMIT);
    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    let caller = Arc::new(Caller { worker: identity.name, connection: CONNECTIONS.fetch_add(1, Ordering::Relaxed), joined: AtomicBool::new(false) });
    let server = ApiServer { cluster: cluster.clone(), caller: caller.clone() };
    BaseChannel::with_defaults(transport)
        .execute(server.serve())
        .for_each_concurrent(Some(MAX_CALLS_AT_ONCE), |request| contain_panics("an API handler", request))
        .await;
    if caller.joined.load(Ordering::Acquire) {
        cluster.worker_left(&caller.worker, caller.connection);
    }
}

/// Who is on the other end of an API connection.
struct Caller {
    /// The id its handshake gave.
    worker: String,
    /// This connection's serial number.
    connection: u64,
    /// Whether it joined as a worker on this connection.
    joined: AtomicBool,
}

#[derive(Clone)]
struct ApiServer {
    cluster: Arc<Cluster>,
    caller: Arc<Caller>,
}

impl ApiServer {
    /// Runs `f` on a blocking thread: admission and the history wait on
    /// the file system.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Arc<Cluster>) -> Result<T, String> + Send + 'static) -> Result<T, String> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&cluster)).await.unwrap_or_else(|e| Err(format!("the cluster failed to answer: {e}")))
    }
}

impl ClusterApi for ApiServer {
    async fn submit(self, _: Context, submission: Submission) -> Result<JobId, String> {
        let caller = excerpt(&self.caller.worker, EXCERPT_CHARS);
        let result = self.blocking(move |cluster| cluster.submit(submission)).await;
        if let Err(why) = &result {
            tracing::info!("refused a job from {caller}: {why}");
        }
        result
    }

    async fn job(self, _: Context, id: JobId) -> Result<JobInfo, String> {
        self.blocking(move |cluster| cluster.job(id)).await
    }

    async fn jobs(self, _: Context, filter: ListFilter) -> Result<Vec<JobInfo>, String> {
        self.blocking(move |cluster| cluster.jobs(filter)).await
    }

    async fn cancel(self, _: Context, id: JobId) -> Result<JobInfo, String> {
        self.blocking(move |cluster| {
            cluster.cancel(id)?;
            cluster.job(id)
        })
        .await
    }

    async fn workers(self, _: Context) -> Vec<WorkerInfo> {
        self.cluster.workers()
    }

    async fn logs(self, _: Context, id: JobId, task: Option<String>) -> Result<Vec<String>, String> {
        self.blocking(move |cluster| cluster.logs(id, task.as_deref())).await
    }

    async fn join(self, _: Context, offer: JoinOffer) -> Result<Welcome, String> {
        if !(1..=MAX_SLOTS).contains(&offer.slots) || !(1..=MAX_SLOTS).contains(&offer.cores) {
            return Err(format!("slots and cores are from 1 to {MAX_SLOTS}"));
        }
        if offer.labels.len() > MAX_REQUIRED_LABELS {
            return Err(format!("at most {MAX_REQUIRED_LABELS} labels"));
        }
        self.cluster.worker_joined(&self.caller.worker, self.caller.connection, offer.labels, offer.slots, offer.cores);
        self.caller.joined.store(true, Ordering::Release);
        Ok(Welcome { heartbeat_interval: self.cluster.heartbeat_interval() })
    }

    async fn agent_heartbeat(self, _: Context, load: Option<Load>, memory: WorkerMemory) -> AgentReply {
        let sane = load.is_none_or(|load| load.load_average.is_finite() && load.load_average >= 0.0);
        if sane && self.caller.joined.load(Ordering::Acquire) && self.cluster.worker_heartbeat(&self.caller.worker, load, memory) {
            AgentReply::Continue
        } else {
            AgentReply::JoinAgain
        }
    }

    async fn next_job(self, _: Context, mut declined: Vec<JobId>) -> Option<JobId> {
        if !self.caller.joined.load(Ordering::Acquire) {
            // Held as any answer of none is: a caller that has not joined
            // must not spin.
            tokio::time::sleep(crate::rpc::POLL_WAIT).await;
            return None;
        }
        declined.truncate(MAX_DECLINED);
        self.cluster.next_job(&self.caller.worker, &declined).await
    }
}
