//! A worker's RPC connection to a coordinator (one job's engine) or to a
//! cluster, shared by the worker's loops and made again when it breaks.
//!
//! A coordinator that goes away may be restarted (it resumes its job from
//! its journal; a cluster resumes its jobs), so a broken connection is not
//! the end: the first loop whose call fails reconnects for up to the
//! reconnect timeout, while the others wait for it. What "the same peer"
//! means is the [`Dial`]er's business: a job's link checks that the
//! coordinator it finds runs the same job ([`crate::worker`]), a cluster's
//! link just reconnects ([`crate::agent`]). A peer that answers with a
//! refusal, or does not come back in time, is gone for good: every call
//! fails from then on with [`LinkLost`].
//!
//! Also the deadlines every call of a worker carries ([`call_context`]).

use std::future::Future;
use std::time::{Duration, Instant};

use tarpc::client::RpcError;
use tarpc::context;

use crate::rpc::CALL_DEADLINE;
use crate::untrusted::{excerpt, EXCERPT_CHARS};

/// Pause between connection attempts while the peer is not up (again).
pub const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// How a [`Link`] makes a new connection to its peer.
pub trait Dial: Send + Sync {
    /// The RPC client a connection gives.
    type Client: Clone + Send + Sync;

    /// One try at a new connection to the same peer.
    fn dial(&self) -> impl Future<Output = Result<Self::Client, Redial>> + Send;
}

/// Why a try at reconnecting gave no connection.
#[derive(Debug)]
pub enum Redial {
    /// No answer (yet): try again until the timeout.
    Failed(String),
    /// An answer that will not change (a refusal, another job): give up,
    /// saying why.
    Gone(String),
}

/// The peer of a [`Link`] is gone for good: it did not come back within
/// the reconnect timeout, or came back refusing this worker.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct LinkLost {
    /// The address the link dials.
    pub address: String,
    /// What broke, and why reconnecting did not help, in one line.
    pub error: String,
}

/// The connection to one peer, shared by a worker's loops (see the module docs).
pub struct Link<D: Dial> {
    dialer: D,
    /// The address, for errors.
    address: String,
    /// The peer in log lines: "the coordinator at HOST:PORT".
    peer: String,
    reconnect_timeout: Duration,
    /// Held while reconnecting, so that one loop reconnects and the others
    /// wait for it.
    current: tokio::sync::Mutex<LinkState<D::Client>>,
}

struct LinkState<C> {
    client: C,
    /// Counts reconnections: a loop whose call failed on an older client
    /// than the current one just tries again.
    generation: u64,
    /// Set once the peer is gone for good: every call fails at once.
    gone: Option<String>,
}

impl<D: Dial> Link<D> {
    /// A link over `client`, a connection `dialer` made to `address`;
    /// `peer` names it in log lines ("the coordinator at ..."). A broken
    /// connection is made again for up to `reconnect_timeout` (zero gives
    /// up at once).
    pub fn new(dialer: D, client: D::Client, address: String, peer: String, reconnect_timeout: Duration) -> Link<D> {
        Link { dialer, address, peer, reconnect_timeout, current: tokio::sync::Mutex::new(LinkState { client, generation: 0, gone: None }) }
    }

    /// The address this link dials.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Makes a call with `call` on the current connection. A call whose
    /// answer is late is made again; one that fails because the connection
    /// broke is made again once reconnected. Fails only when the peer is
    /// gone for good.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, LinkLost>
    where
        F: Fn(D::Client) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        loop {
            let (client, generation) = {
                let state = self.current.lock().await;
                if let Some(error) = &state.gone {
                    return Err(self.lost(error.clone()));
                }
                (state.client.clone(), state.generation)
            };
            match call(client).await {
                Ok(answer) => return Ok(answer),
                // A peer too busy to answer in time is still there.
                Err(RpcError::DeadlineExceeded) => tracing::debug!("a call went unanswered; making it again"),
                Err(e) => self.reconnect(generation, peer_error(&e)).await?,
            }
        }
    }

    /// Makes every later call fail at once with `why`: the peer no longer
    /// matters (a session whose job ended).
    pub async fn close(&self, why: &str) {
        let mut state = self.current.lock().await;
        state.gone.get_or_insert_with(|| why.to_owned());
    }

    /// Replaces the connection of `generation`, which broke with `error`,
    /// unless another loop did already.
    async fn reconnect(&self, generation: u64, error: String) -> Result<(), LinkLost> {
        let mut state = self.current.lock().await;
        if state.generation != generation || state.gone.is_some() {
            return Ok(());
        }
        let gone = |state: &mut LinkState<D::Client>, why: String| {
            state.gone = Some(why.clone());
            Err(self.lost(why))
        };
        if self.reconnect_timeout.is_zero() {
            return gone(&mut state, error);
        }
        tracing::warn!("lost {}: {error}; trying to reconnect for {} s", self.peer, self.reconnect_timeout.as_secs_f64());
        let give_up = Instant::now() + self.reconnect_timeout;
        let mut last_error;
        loop {
            match self.dialer.dial().await {
                Ok(client) => {
                    tracing::info!("reconnected to {}", self.peer);
                    state.client = client;
                    state.generation += 1;
                    return Ok(());
                }
                Err(Redial::Gone(why)) => return gone(&mut state, format!("{error}; {why}")),
                Err(Redial::Failed(e)) => last_error = e,
            }
            if Instant::now() + CONNECT_RETRY >= give_up {
                let waited = self.reconnect_timeout.as_secs_f64();
                return gone(&mut state, format!("{error}; it did not come back within {waited} s (last try: {last_error})"));
            }
            tokio::time::sleep(CONNECT_RETRY).await;
        }
    }

    fn lost(&self, error: String) -> LinkLost {
        LinkLost { address: self.address.clone(), error }
    }
}

/// The most characters of an error's text [`peer_error`] shows.
const ERROR_CHARS: usize = 4 * EXCERPT_CHARS;

/// `error`'s text, which may carry what a peer sent (a refusal's reason, a
/// server error's detail), as errors and log lines may show it: cut, and
/// with control characters escaped ([`crate::untrusted::excerpt`]).
pub fn peer_error(error: &impl std::fmt::Display) -> String {
    excerpt(&error.to_string(), ERROR_CHARS)
}

/// A call's context with the usual deadline, [`CALL_DEADLINE`].
pub fn call_context() -> context::Context {
    context_with(CALL_DEADLINE)
}

/// A call's context with a deadline `deadline` from now.
pub fn context_with(deadline: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + deadline;
    ctx
}
