//! The coordinator's HTTP status server (axum): the dashboard at `/`, the
//! job's status as JSON at `/api/status`, and Prometheus metrics at
//! `/metrics`. Every response is built from a fresh
//! [`StatusReport`](crate::status::StatusReport); the server only reads.

use std::future::Future;
use std::net::SocketAddr;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::coordinator::StatusHandle;

/// Where the status server listens unless told otherwise (`mr-master --http`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:7879";

/// The dashboard: one self-contained page (no external assets) that polls
/// `/api/status`.
const DASHBOARD: &str = include_str!("dashboard.html");

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
/// `shutdown` completes.
pub async fn serve(listener: TcpListener, status: StatusHandle, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(status)).with_graceful_shutdown(shutdown).await
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
