//! The coordinator's HTTP status server (axum routes, served by hyper): the
//! dashboard at `/`, the job's status as JSON at `/api/status`, and
//! Prometheus metrics at `/metrics`. Every response is built from a fresh
//! [`StatusReport`](crate::status::StatusReport); the server only reads.
//!
//! Its clients are nobody the job knows, so nothing they do may cost the
//! job: its connections draw on the process's one
//! [connection budget](crate::accept) (with the RPC port), and hold at most
//! a share of it ([`Limits::connections`]), so that slow or idle clients
//! wait in the kernel's backlog instead of taking the descriptors the
//! workers, the journal and publishing need. Each connection is bounded in
//! what it sends and how long it takes ([`Limits`]): a client that sends
//! half a header and stalls (slowloris), idles between requests, or asks
//! and never reads the answers is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::accept::{ConnectionBudget, ConnectionPermit};
use crate::coordinator::StatusHandle;

/// Longest a client may take to send a request's headers, counted from
/// when the server starts waiting for them: on a new connection, and after
/// each answer on a kept-alive one. So it is also how long a kept-alive
/// connection may sit idle, and a client that sends half a header and
/// stalls is closed after it.
pub const HEADER_READ_LIMIT: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers) accepted; a larger one
/// is answered 431 and the connection closed. A browser's is about 1 KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most header fields a request may have.
pub const MAX_HEADERS: usize = 32;
/// Bytes a connection buffers, reading or writing (hyper's least is 8 KiB).
/// It bounds what is buffered at once, not a body's size: a route that
/// reads a body (the cluster's POSTs, see
/// [`status_page`](crate::cluster::status_page)) streams it through the
/// buffer up to its own limit and deadline. A body no route reads (every
/// GET's) is drained only as far as this buffer holds, then the
/// connection is closed.
pub const CONNECTION_BUFFER_BYTES: usize = 16 * 1024;
/// Longest a connection stays open, however busy: bounds a client that
/// asks and never reads the answers (the server's writes would otherwise
/// wait forever), and with it the requests one connection may make. The
/// dashboard polls, and opens a new connection when one closes.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a connection being closed (its lifetime over, or the server
/// stopping) has to finish the answer it is sending.
pub const CLOSING_GRACE: Duration = Duration::from_secs(1);
/// The status server holds at most this fraction (1/N) of the process's
/// connections at once...
pub const BUDGET_SHARE_DIVISOR: usize = 4;
/// ...and never more than this many: a dashboard needs one or two.
pub const MAX_CONNECTIONS: usize = 64;

/// The bounds on the status server's clients; [`Limits::default`] holds
/// the constants above (tests shorten them).
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`HEADER_READ_LIMIT`].
    pub header_read: Duration,
    /// See [`MAX_HEADER_BYTES`].
    pub header_bytes: usize,
    /// See [`MAX_HEADERS`].
    pub headers: usize,
    /// See [`CONNECTION_BUFFER_BYTES`]; at least 8 KiB.
    pub buffer_bytes: usize,
    /// See [`CONNECTION_LIFETIME`].
    pub lifetime: Duration,
    /// See [`CLOSING_GRACE`].
    pub closing_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read: HEADER_READ_LIMIT,
            header_bytes: MAX_HEADER_BYTES,
            headers: MAX_HEADERS,
            buffer_bytes: CONNECTION_BUFFER_BYTES,
            lifetime: CONNECTION_LIFETIME,
            closing_grace: CLOSING_GRACE,
        }
    }
}

impl Limits {
    /// How many connections the status server may hold out of `budget`'s:
    /// 1/[`BUDGET_SHARE_DIVISOR`] of it, 1 to [`MAX_CONNECTIONS`].
    pub fn connections(budget: &ConnectionBudget) -> usize {
        (budget.total() / BUDGET_SHARE_DIVISOR).clamp(1, MAX_CONNECTIONS)
    }
}

/// Where the status server listens unless told otherwise (`mr-master --http`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:7879";

/// The dashboard: one self-contained page (no external assets) that polls
/// `/api/status`.
/// The one-job dashboard page; it polls `api/status` relative to its own
/// URL, so the standing cluster serves it per job too.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// Binds the status server. `requested` is the address given with `--http`,
/// or `None` for [`DEFAULT_ADDR`]; if the default is taken (say, by another
/// job on this machine) a free port on the same host is used instead and
/// the second value says so. An address the user asked for must be free.
pub async fn bind(requested: Option<&str>) -> std::io::Result<(TcpListener, bool)> {
    match requested {
        Some(addr) => Ok((TcpListener::bind(addr).await?, false)),
        None => match TcpListener::bind(DEFAULT_ADDR).await {
            Ok(listener) => Ok((listener, false)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let host = DEFAULT_ADDR.rsplit_once(':').map_or("127.0.0.1", |(host, _)| host);
                Ok((TcpListener::bind((host, 0)).await?, true))
            }
            Err(e) => Err(e),
        },
    }
}

/// The URL of a server bound at `addr`.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// Serves the status of the job behind `status` on `listener` until
/// `shutdown` completes, within the process's connection budget and the
/// default [`Limits`]; then closes every connection (each has
/// [`CLOSING_GRACE`] to finish its answer) and returns.
pub async fn serve(listener: TcpListener, status: StatusHandle, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let process = crate::accept::connection_cap();
    let budget = process.limited_to(Limits::connections(&process));
    serve_router(listener, router(status), &Limits::default(), budget, shutdown).await;
    Ok(())
}

/// Serves `router` (another server's pages: the standing cluster's) on
/// `listener` as [`serve`] serves a job's status: within the process's
/// connection budget and the default [`Limits`], until `shutdown`.
pub async fn serve_routes(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let process = crate::accept::connection_cap();
    let budget = process.limited_to(Limits::connections(&process));
    serve_router(listener, router, &Limits::default(), budget, shutdown).await;
    Ok(())
}

/// Serves `router` on `listener` within `budget` and `limits` until
/// `shutdown`, then stops its connections and waits for them.
async fn serve_router(listener: TcpListener, router: Router, limits: &Limits, budget: ConnectionBudget, shutdown: impl Future<Output = ()>) {
    // Tells each connection the server is stopping.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut incoming = std::pin::pin!(crate::accept::incoming(listener, budget));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = incoming.next() => {
                let Some((stream, permit)) = accepted else { break };
                connections.spawn(serve_connection(stream, permit, router.clone(), limits.clone(), stopping.clone()));
            }
            // Finished connections are reaped, so the set holds open ones only.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection's requests within `limits`, until the client
/// closes it, a limit closes it, or the server stops; `permit` is its
/// place in the budget, given back when it closes.
async fn serve_connection(
    stream: TcpStream,
    permit: ConnectionPermit,
    router: Router,
    limits: Limits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_header_size(limits.header_bytes)
        .max_headers(limits.headers)
        .max_buf_size(limits.buffer_bytes.max(8 * 1024))
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        // Closed by the client, or by a limit on what it sends (its errors
        // are the client's: nothing to log).
        _ = connection.as_mut() => return,
        () = tokio::time::sleep(limits.lifetime) => {}
        _ = stopping.wait_for(|stopped| *stopped) => {}
    }
    // Finishes the answer in flight, if any, then closes; a client that
    // does not read it is cut off after the grace.
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.closing_grace, connection).await;
    drop(permit);
}

fn router(status: StatusHandle) -> Router {
    let for_json = status.clone();
    let for_metrics = status;
    Router::new().route("/", get(|| async { Html(DASHBOARD) })).route("/api/status", get(move || async move { Json(for_json.report()) })).route(
        "/metrics",
        get(move || async move {
            ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::render(&for_metrics.report())).into_response()
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Short limits, so that each test takes a fraction of a second.
    fn limits() -> Limits {
        Limits {
            header_read: Duration::from_millis(300),
            lifetime: Duration::from_secs(2),
            closing_grace: Duration::from_millis(200),
            ..Limits::default()
        }
    }

    /// A server of one route on a free port, within `budget`; it stops when
    /// the returned sender is dropped or sent to.
    async fn server(budget: ConnectionBudget) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = Router::new().route("/", get(|| async { "up" }));
        let served = tokio::spawn(async move {
            serve_router(listener, router, &limits(), budget, async move {
                let _ = stopped.await;
            })
            .await
        });
        (addr, stop, served)
    }

    /// Reads until the server closes the connection; how long that took.
    async fn closed_after(stream: &mut TcpStream) -> Duration {
        let started = Instant::now();
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await.expect("the server closes it").ok();
        started.elapsed()
    }

    /// One request on a fresh connection; the status line.
    async fn status_line(addr: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.expect("an answer").unwrap();
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn half_a_header_and_an_idle_kept_alive_connection_are_closed() {
        let (addr, _stop, _served) = server(ConnectionBudget::new(8)).await;
        let mut slow = TcpStream::connect(&addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let after = closed_after(&mut slow).await;
        assert!(after < Duration::from_secs(2), "half a header held the connection for {after:?}");

        let mut kept = TcpStream::connect(&addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = [0; 256];
        let n = kept.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer[..n]));
        let after = closed_after(&mut kept).await;
        assert!(after < Duration::from_secs(2), "an idle kept-alive connection stayed open {after:?}");
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let (addr, _stop, _served) = server(ConnectionBudget::new(8)).await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEADER_BYTES));
        stream.write_all(huge.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.expect("an answer");
        assert!(answer.starts_with(b"HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&answer));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.expect("an answer");
        assert!(answer.starts_with(b"HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&answer));
    }

    #[tokio::test]
    async fn a_busy_connection_is_closed_at_the_end_of_its_lifetime() {
        let (addr, _stop, _served) = server(ConnectionBudget::new(8)).await;
        let mut busy = TcpStream::connect(&addr).await.unwrap();
        let started = Instant::now();
        let mut answer = [0; 1024];
        let closed = loop {
            if busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.is_err() {
                break started.elapsed();
            }
            match tokio::time::timeout(Duration::from_secs(5), busy.read(&mut answer)).await.expect("an answer") {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        assert!(closed >= limits().lifetime && closed < Duration::from_secs(5), "closed after {closed:?}");
    }

    #[tokio::test]
    async fn idle_clients_hold_no_more_than_the_share_and_leave_room_for_the_rest() {
        let process = ConnectionBudget::new(8);
        let (addr, _stop, _served) = server(process.limited_to(2)).await;
        let idle: Vec<TcpStream> =
            futures::future::join_all((0..20).map(|_| TcpStream::connect(&addr))).await.into_iter().map(Result::unwrap).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(process.available(), 6, "the status server holds its share and no more");
        drop(idle);
        assert_eq!(status_line(&addr).await, "HTTP/1.0 200 OK", "it answers once they leave");
    }

    #[tokio::test]
    async fn stopping_closes_every_connection_and_returns() {
        let (addr, stop, served) = server(ConnectionBudget::new(8)).await;
        let mut idle = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(status_line(&addr).await, "HTTP/1.0 200 OK");
        let started = Instant::now();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), served).await.expect("the server returns").unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(closed_after(&mut idle).await < Duration::from_secs(1));
    }
}
