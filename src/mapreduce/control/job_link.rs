//! A worker's RPC connection to one job's coordinator: a one-job
//! `mr-master` at `HOST:PORT`, or one job of a cluster at
//! `HOST:PORT/job-N` ([`crate::route`]); the same [`Coordinator`] service
//! either way. [`connect`] makes the first connection (retrying while the
//! coordinator is not up yet) and learns which kind of server answered;
//! [`JobLink`] is the [`Link`] the worker's loops share afterwards, which
//! reconnects only to a coordinator that runs the same job.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tarpc::client;
use tarpc::tokio_serde::formats::Bincode;

use crate::handshake::{self, HandshakeError, Identity, Secret, ServerKind};
use crate::link::{call_context, context_with, peer_error, Dial, Link, LinkLost, Redial, CONNECT_RETRY};
use crate::memory_budget::WorkerMemory;
use crate::rpc::{Assignment, AttemptProgress, CoordinatorClient, HeartbeatReply, JobEnd, TaskReport, CALL_DEADLINE};
use crate::slot::SlotActivity;
use crate::worker_config::WorkerError;

/// The link to one job's coordinator.
pub type JobLink = Link<JobDialer>;

/// Dials one job's coordinator again, checking that it still runs the job.
pub struct JobDialer {
    /// The job's address.
    pub address: String,
    /// The secret to prove in the handshake.
    pub secret: Option<Secret>,
    /// This process, as every connection's handshake names it.
    pub identity: Identity,
    /// The job this worker works for: a coordinator found on reconnecting
    /// must run the same one.
    pub job_id: String,
    /// The SHA-256 of this worker's own plugin, if it was given one.
    pub app_sha256: Option<String>,
}

impl JobDialer {
    /// The link over `client`, a first connection to this job.
    pub fn into_link(self, client: CoordinatorClient, reconnect_timeout: Duration) -> JobLink {
        let (address, peer) = (self.address.clone(), format!("the coordinator at {}", self.address));
        Link::new(self, client, address, peer, reconnect_timeout)
    }
}

impl Dial for JobDialer {
    type Client = CoordinatorClient;

    async fn dial(&self) -> Result<CoordinatorClient, Redial> {
        let (client, _, _) = open_connection(&self.address, self.secret.as_ref(), &self.identity).await.map_err(|e| match e {
            ConnectError::Network(e) => Redial::Failed(e),
            ConnectError::Refused(refusal) => Redial::Gone(format!("the coordinator there now refuses this worker: {}", peer_error(&refusal))),
        })?;
        let spec = client
            .job(call_context(), self.app_sha256.clone())
            .await
            .map_err(|e| Redial::Failed(peer_error(&e)))?
            .map_err(|why| Redial::Gone(format!("the coordinator there now refuses this worker: {}", peer_error(&why))))?;
        if spec.job_id != self.job_id {
            let other = crate::untrusted::excerpt(&spec.job_id, crate::untrusted::EXCERPT_CHARS);
            return Err(Redial::Gone(format!("the coordinator there now runs another job ({other}, not {})", self.job_id)));
        }
        Ok(client)
    }
}

/// Connects to the coordinator at `master`, retrying until
/// `connect_timeout`; a coordinator that refuses this worker is not asked
/// again. Returns the client, this end's address and the kind of server.
pub async fn connect(
    master: &str,
    secret: Option<&Secret>,
    identity: &Identity,
    connect_timeout: Duration,
) -> Result<(CoordinatorClient, SocketAddr, ServerKind), WorkerError> {
    let give_up = Instant::now() + connect_timeout;
    loop {
        match open_connection(master, secret, identity).await {
            Ok(connection) => return Ok(connection),
            Err(ConnectError::Refused(error)) => return Err(WorkerError::Refused { master: master.to_owned(), error: peer_error(&error) }),
            Err(ConnectError::Network(e)) if Instant::now() + CONNECT_RETRY < give_up => {
                tracing::debug!("coordinator at {master} not reachable yet: {e}");
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(ConnectError::Network(last_error)) => {
                return Err(WorkerError::Unreachable { master: master.to_owned(), timeout: connect_timeout, last_error })
            }
        }
    }
}

/// Why one try at connecting gave no client.
pub enum ConnectError {
    /// The network failed: worth trying again.
    Network(String),
    /// The handshake ended in a refusal, on either side: it would again.
    Refused(HandshakeError),
}

impl From<HandshakeError> for ConnectError {
    fn from(e: HandshakeError) -> ConnectError {
        match e.is_transient() {
            true => ConnectError::Network(peer_error(&e)),
            false => ConnectError::Refused(e),
        }
    }
}

/// One try at a connection to the coordinator at `master`: TCP, then the
/// handshake and the service byte, then the RPC client on it. Returns the
/// client, this end's address, and what kind of server answered.
pub async fn open_connection(
    master: &str,
    secret: Option<&Secret>,
    identity: &Identity,
) -> Result<(CoordinatorClient, SocketAddr, ServerKind), ConnectError> {
    let (stream, kind) = handshake::dial_learning(master, secret, identity, crate::files::SERVICE_RPC, None).await?;
    let local = stream.local_addr().map_err(|e| ConnectError::Network(e.to_string()))?;
    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
    Ok((CoordinatorClient::new(client::Config::default(), transport).spawn(), local, kind))
}

/// Sends one heartbeat with the progress of the attempts `slots` run for
/// this job, and stops those the coordinator no longer needs. Returns how
/// the job ended, once the coordinator says it did.
pub async fn send_heartbeat(link: &JobLink, slots: &[SlotActivity], memory: WorkerMemory) -> Result<Option<JobEnd>, LinkLost> {
    let running: Vec<AttemptProgress> = slots.iter().filter_map(SlotActivity::snapshot).collect();
    tracing::trace!(?running, "heartbeat");
    let heartbeat = |client: CoordinatorClient| {
        let running = running.clone();
        async move { client.heartbeat(call_context(), running, memory).await }
    };
    match link.call(heartbeat).await? {
        HeartbeatReply::Continue => Ok(None),
        HeartbeatReply::Abandon(attempts) => {
            for slot in slots {
                slot.cancel_if(&attempts);
            }
            Ok(None)
        }
        HeartbeatReply::Exit(end) => Ok(Some(end)),
    }
}

/// Asks the job for a task (held up to [`crate::rpc::POLL_WAIT`]).
pub async fn request_task(link: &JobLink) -> Result<Assignment, LinkLost> {
    link.call(|client: CoordinatorClient| async move { client.request_task(call_context()).await }).await
}

/// Reports an attempt's end. Reports are idempotent: one whose answer was
/// late is sent again.
pub async fn report_task(link: &JobLink, report: TaskReport, memory: WorkerMemory) -> Result<(), LinkLost> {
    let send_report = move |client: CoordinatorClient| {
        let report = report.clone();
        async move { client.report_task(context_with(CALL_DEADLINE), report, memory).await }
    };
    link.call(send_report).await
}
