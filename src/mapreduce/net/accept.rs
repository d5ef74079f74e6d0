//! Accepting RPC connections within the process's limits.
//!
//! Every connection costs a file descriptor. Without a bound, clients that
//! hold enough connections open exhaust the descriptors, and `accept` then
//! fails at once, again and again (`EMFILE`): a loop that only logs and
//! retries spins a core and fills the log while serving no one. So:
//!
//! - at most [`connection_cap`] connections are open at once, a number below
//!   the descriptor limit; the next client waits in the kernel's backlog
//!   until one closes;
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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Descriptors kept for everything but connections (the job directory, the
/// journal, log files, the runtime's own).
const RESERVED_DESCRIPTORS: u64 = 32;
/// Connections allowed however low the descriptor limit.
const MIN_CONNECTIONS: usize = 8;
/// Connections allowed however high the descriptor limit.
const MAX_CONNECTIONS: usize = 16_384;
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How many connections may be open at once: the soft limit on open files
/// less [`RESERVED_DESCRIPTORS`], within 8 and 16,384.
pub fn connection_cap() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 1024 };
    usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(MAX_CONNECTIONS).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// The connections `listener` accepts, at most `cap` open at once: each
/// comes with a permit to drop when it closes.
pub fn incoming(listener: TcpListener, cap: usize) -> impl Stream<Item = (TcpStream, OwnedSemaphorePermit)> {
    let permits = Arc::new(Semaphore::new(cap));
    futures::stream::unfold((listener, permits, Backoff::default()), |(listener, permits, mut backoff)| async move {
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    // Requests and answers are small messages: sent at once,
                    // not held for the peer's delayed acknowledgement.
                    let _ = stream.set_nodelay(true);
                    return Some(((stream, permit), (listener, permits, backoff)));
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
    fn the_cap_stays_below_the_descriptor_limit() {
        let cap = connection_cap();
        assert!((MIN_CONNECTIONS..=MAX_CONNECTIONS).contains(&cap));
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert!(cap as u64 <= limit.rlim_cur.max(MIN_CONNECTIONS as u64 + RESERVED_DESCRIPTORS));
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
