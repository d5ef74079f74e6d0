//! The one-job listener: what [`Job::run`](super::Job::run) puts in front
//! of the job's engine. It owns what belongs to a *listener*, not to a job:
//! the process's [connection budget](crate::accept::connection_cap) and the
//! backoff when `accept` runs out of descriptors ([`crate::accept`]), the
//! handshake with the listener's secret, and the rate-limited log of
//! connections whose handshake failed. Each admitted connection is handed
//! to the job ([`super::connections`]), its permit held until it closes.
//!
//! The standing cluster will have one such listener for many jobs; it
//! routes an authenticated stream to a job through
//! [`JobHandle::serve_connection`](super::JobHandle::serve_connection).
//! This one differs in one point, kept so that the one-job path behaves as
//! it always has: the job claims the worker id *inside* the handshake, so a
//! worker whose id another process holds is refused with the reason.

use std::sync::Mutex;

use futures::StreamExt;
use tokio::net::TcpListener;

use crate::handshake::{self, RefusalLog, Secret};
use crate::secure::Stream;

use super::connections::{contain_panics, OpenConnection};
use super::engine::lock;
use super::JobHandle;

/// Accepts connections for `job` within the process's connection budget,
/// admits them with `secret` and serves them until an I/O error on the
/// listener. Dropping the future closes every connection it accepted.
pub(super) async fn serve(listener: TcpListener, job: JobHandle, secret: Option<Secret>) -> std::io::Result<()> {
    let refusals = Mutex::new(RefusalLog::default());
    crate::accept::incoming(listener, crate::accept::connection_cap())
        .for_each_concurrent(None, |(stream, permit)| {
            let (job, secret, refusals) = (&job, secret.as_ref(), &refusals);
            contain_panics("a connection", async move {
                let peer = stream.peer_addr().map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
                let Some((stream, open)) = admit(job, secret, refusals, stream, &peer).await else { return };
                // `JobClosed` only: the connection came after the job's end.
                let _ = job.serve_open(stream, open, peer).await;
                // The permit goes with the connection.
                drop(permit);
            })
        })
        .await;
    Ok(())
}

/// Runs the handshake on a new connection (encrypting it if there is a
/// secret): the peer must know `secret` (if any), and the worker id it
/// gives must not be held by another process. Refusals are logged, at most
/// one line per 10 s.
async fn admit(
    job: &JobHandle,
    secret: Option<&Secret>,
    refusals: &Mutex<RefusalLog>,
    stream: tokio::net::TcpStream,
    peer: &str,
) -> Option<(Stream, OpenConnection)> {
    // A claim made for a handshake that then fails (the client left before
    // reading its admission) is given back when `opened` is dropped.
    let opened = std::cell::Cell::new(None);
    let claim = |identity: &handshake::Identity| {
        opened.set(Some(OpenConnection::claim(&job.0, identity).map_err(|e| e.to_string())?));
        Ok(())
    };
    match handshake::accept(stream, secret, claim).await {
        Ok((stream, _)) => Some((stream, opened.take()?)),
        Err(e) => {
            drop(opened.take());
            lock(refusals).refused(peer, &e);
            None
        }
    }
}
