//! Accepting connections within the process's limits.
//!
//! Every connection costs a file descriptor. Without a bound, clients that
//! hold enough connections open exhaust the descriptors, and `accept` then
//! fails at once, again and again (`EMFILE`): a loop that only logs and
//! retries spins a core and fills the log while serving no one, and the
//! job's own files (the journal, the published outputs) cannot be opened.
//! So:
//!
//! - every listener of a process draws on one [`ConnectionBudget`], the
//!   process's ([`connection_cap`]): at most that many connections are open
//!   at once, on all its ports together (the coordinator's RPC port and its
//!   status page; a worker's file server), a number that leaves
//!   [`RESERVED_DESCRIPTORS`] for everything else. A listener may also be
//!   held to a share of it ([`ConnectionBudget::limited_to`]: the status
//!   page, so that its clients never crowd out the workers). The next
//!   client waits in the kernel's backlog until a connection closes;
//! - an `accept` that fails for want of descriptors or memory (the limit
//!   shared with files the job opens) is retried after a pause that doubles
//!   from 10 ms to 1 s, and reported in one log line per 10 s at most, with
//!   the number of failures since the last;
//! - a connection that sends nothing for a while ([`IdleLimited`]; the
//!   coordinator allows twice the task timeout) is closed: a worker sends
//!   a heartbeat every second or so, so a silent connection is a dead peer
//!   or one that stopped halfway through a frame, and it would otherwise
//!   hold its place under the cap forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Descriptors kept for everything but connections: the standard streams,
/// the runtime's own, the listeners, the journal and the log file, and
/// what publishing opens at once (the output directory, a temporary file
/// for the success marker, a directory listing), with room to spare.
pub const RESERVED_DESCRIPTORS: u64 = 32;
/// Descriptors one connection may hold: its socket, and the one file it
/// serves or receives at a time (a range of a run or an input, an upload).
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;
/// Connections allowed however low the descriptor limit.
const MIN_CONNECTIONS: usize = 8;
/// Connections allowed however high the descriptor limit.
const MAX_CONNECTIONS: usize = 16_384;
/// The soft limit assumed if the process cannot read its own.
const ASSUMED_DESCRIPTOR_LIMIT: u64 = 1024;
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The process's connection budget, one for all its listeners: the soft
/// limit on open files less [`RESERVED_DESCRIPTORS`], shared out at
/// [`DESCRIPTORS_PER_CONNECTION`] each, within 8 and 16,384 connections.
/// Measured once, at the first call; every call returns the same budget.
pub fn connection_cap() -> ConnectionBudget {
    static PROCESS: OnceLock<ConnectionBudget> = OnceLock::new();
    PROCESS.get_or_init(|| ConnectionBudget::new(connections_for(descriptor_limit()))).clone()
}

/// The soft limit on open files.
fn descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        ASSUMED_DESCRIPTOR_LIMIT
    }
}

/// How many connections a process with `descriptors` open files may hold.
fn connections_for(descriptors: u64) -> usize {
    let spare = descriptors.saturating_sub(RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION;
    usize::try_from(spare).unwrap_or(MAX_CONNECTIONS).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// Connections that may be open at once: clones share the count. Made by
/// [`connection_cap`] (the process's) or [`ConnectionBudget::new`] (a test's).
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    /// The whole budget's permits, shared by every clone and every share.
    whole: Arc<Semaphore>,
    /// Connections the whole budget allows.
    total: usize,
    /// A share's own bound within the whole, if this is a share.
    share: Option<Arc<Semaphore>>,
}

impl ConnectionBudget {
    /// A budget of `connections` (at least one) of its own.
    pub fn new(connections: usize) -> ConnectionBudget {
        let total = connections.max(1);
        ConnectionBudget { whole: Arc::new(Semaphore::new(total)), total, share: None }
    }

    /// Connections the whole budget allows.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Connections free in the whole budget now.
    pub fn available(&self) -> usize {
        self.whole.available_permits()
    }

    /// A share of this budget: connections under it count against this
    /// budget too, and at most `connections` (at least one) of them are
    /// open at once, however many this budget has free.
    pub fn limited_to(&self, connections: usize) -> ConnectionBudget {
        ConnectionBudget { share: Some(Arc::new(Semaphore::new(connections.max(1)))), ..self.clone() }
    }

    /// Waits for room for one more connection. The share's permit is taken
    /// first, so that a share's waiting clients hold nothing of the whole.
    pub async fn admit(&self) -> ConnectionPermit {
        let share = match &self.share {
            Some(share) => Some(share.clone().acquire_owned().await.expect("the semaphore is never closed")),
            None => None,
        };
        let whole = self.whole.clone().acquire_owned().await.expect("the semaphore is never closed");
        ConnectionPermit { _whole: whole, _share: share }
    }
}

/// One connection's place in a [`ConnectionBudget`]: given back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    _whole: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
}

/// The connections `listener` accepts within `budget`: each comes with a
/// permit to drop when it closes.
pub fn incoming(listener: TcpListener, budget: ConnectionBudget) -> impl Stream<Item = (TcpStream, ConnectionPermit)> {
    futures::stream::unfold((listener, budget, Backoff::default()), |(listener, budget, mut backoff)| async move {
        let permit = budget.admit().await;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    // Requests and answers are small messages: sent at once,
                    // not held for the peer's delayed acknowledgement.
                    let _ = stream.set_nodelay(true);
                    return Some(((stream, permit), (listener, budget, backoff)));
                }
                Err(e) => backoff.failed(&e).await,
            }
        }
    })
}

/// Pauses after failed `accept`s, and their rate-limited log line.
#[derive(Default)]
struct Backoff {
    pause: Option<Duration>,
    failures_unlogged: u64,
    logged_at: Option<Instant>,
}

impl Backoff {
    fn succeeded(&mut self) {
        self.pause = None;
    }

    async fn failed(&mut self, error: &io::Error) {
        self.failures_unlogged += 1;
        if self.logged_at.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::warn!("accepting connections: {error} ({} failures; retrying with pauses up to 1 s)", self.failures_unlogged);
            self.failures_unlogged = 0;
            self.logged_at = Some(Instant::now());
        }
        // Out of descriptors or memory: nothing changes until something
        // closes, so wait, longer each time. Other errors (a client that
        // reset its connection before it was accepted) pass at once.
        if is_exhaustion(error) {
            let pause = self.pause.map_or(FIRST_PAUSE, |p| (p * 2).min(LONGEST_PAUSE));
            self.pause = Some(pause);
            tokio::time::sleep(pause).await;
        }
    }
}

fn is_exhaustion(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// A connection that fails its reads once nothing has arrived for `limit`
/// (the RPC layer then closes it). Writes pass through.
pub struct IdleLimited<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleLimited<S> {
    /// `inner`, closed after `limit` without a byte from its peer.
    pub fn new(inner: S, limit: Duration) -> IdleLimited<S> {
        IdleLimited { inner, limit, deadline: Box::pin(tokio::time::sleep(limit)) }
    }

    /// The connection itself.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The connection, no longer limited.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleLimited<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.limit;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let secs = self.limit.as_secs_f64();
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing received for {secs:.1} s"))))
                }
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleLimited<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_and_is_one_for_the_process() {
        let cap = connection_cap();
        assert!((MIN_CONNECTIONS..=MAX_CONNECTIONS).contains(&cap.total()));
        assert!(cap.total() as u64 * DESCRIPTORS_PER_CONNECTION + RESERVED_DESCRIPTORS <= descriptor_limit().max(64));
        assert!(Arc::ptr_eq(&cap.whole, &connection_cap().whole), "every listener draws on the same budget");
        assert_eq!(connections_for(64), 16);
        assert_eq!(connections_for(1024), 496);
        assert_eq!(connections_for(10), MIN_CONNECTIONS);
        assert_eq!(connections_for(u64::MAX), MAX_CONNECTIONS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_counts_against_the_whole_and_stops_at_its_own_bound() {
        let whole = ConnectionBudget::new(4);
        let share = whole.limited_to(2);
        let (a, b) = (share.admit().await, share.admit().await);
        assert_eq!(whole.available(), 2, "a share's connections count against the whole");
        let third = tokio::time::timeout(Duration::from_secs(1), share.admit()).await;
        assert!(third.is_err(), "a share holds no more than its bound");
        assert_eq!(whole.available(), 2, "a share's waiting client holds nothing of the whole");
        let (c, d) = (whole.admit().await, whole.admit().await);
        // a's place goes back to both; another connection takes the whole's.
        drop(a);
        let f = whole.admit().await;
        let blocked = tokio::time::timeout(Duration::from_secs(1), share.admit()).await;
        assert!(blocked.is_err(), "room in the share, none in the whole: it waits");
        drop(c);
        let e = tokio::time::timeout(Duration::from_secs(1), share.admit()).await.expect("room in both");
        drop((b, d, e, f));
        assert_eq!(whole.available(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_off_and_a_talking_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let mut limited = IdleLimited::new(near, Duration::from_secs(2));
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            far.write_all(b"x").await.unwrap();
            assert_eq!(limited.read(&mut buf).await.unwrap(), 1, "bytes within the limit keep it open");
        }
        let started = tokio::time::Instant::now();
        let err = limited.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn exhaustion_is_told_from_other_errors() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
    }
}
