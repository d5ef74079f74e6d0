//! The cluster's HTTP pages and JSON API (`mr-master --serve --http`),
//! served like a job's status server ([`crate::http`]: the same connection
//! limits). The GETs only read, and are open to whoever can reach the
//! server (it listens on loopback unless told otherwise):
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the jobs page: queued, running and finished jobs (a running one links to its dashboard) and the workers, refreshed every 2 s (by a fetch, not a reload) |
//! | `GET /jobs/{id}/` | a running job's dashboard, the one-job page (it polls `/jobs/{id}/api/status`) |
//! | `GET /api/jobs` | the unfinished jobs, then the newest 100 finished ones (JSON, as `mr list --all --json`) |
//! | `GET /api/jobs/{id}` | one job (as `mr status ID --json`) |
//! | `GET /api/jobs/{id}/status` | a running job's full status (the one-job `/api/status` document) |
//! | `GET /api/workers` | the workers, their labels and load (as `mr workers --json`) |
//! | `GET /metrics` | Prometheus: jobs by state, each worker's load, free memory and disk, and whether it takes tasks |
//! | `POST /api/jobs` | submits the [`Submission`] in the body (JSON, as `mr submit` sends it): 201 with `{"id": N}` |
//! | `POST /api/jobs/{id}/cancel` | cancels a job (as `mr cancel`): 200 with the job (as `GET /api/jobs/{id}`) |
//!
//! The POSTs change the cluster, so they need the cluster's token (the
//! content of its `--token-file`) as `Authorization: Bearer TOKEN`: a
//! missing or wrong one is answered 401; a cluster without a token file
//! refuses them all with 403 (anyone on its machine could otherwise
//! submit jobs that run as its user). Their errors are JSON,
//! `{"error": "one line"}`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::cluster::api::{JobInfo, ListFilter, Submission, WorkerInfo};
use crate::cluster::history::JobState;
use crate::cluster::queue::JobId;
use crate::cluster::registry::Cluster;
use crate::handshake::Secret;
use crate::metrics::Exposition;

/// Largest body a POST may send: a submission is a few KiB (its flags and
/// input paths). A larger one is answered 413 without being read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest a client may take to send a POST's body once its headers are
/// in: one that trickles it (slowloris on the body) is answered 408 and
/// closed, rather than holding its connection for its whole lifetime.
pub const BODY_READ_LIMIT: Duration = Duration::from_secs(10);

/// Finished jobs the pages list.
const FINISHED_SHOWN: u32 = 100;

/// The routes above, on `cluster`; `secret` is its token (`--token-file`),
/// which the POSTs need as their bearer credential (`None`: they are
/// refused).
pub fn router(cluster: Arc<Cluster>, secret: Option<Secret>) -> Router {
    let secret = Arc::new(secret);
    let (jobs, job, status, workers, metrics, page) =
        (cluster.clone(), cluster.clone(), cluster.clone(), cluster.clone(), cluster.clone(), cluster.clone());
    let (submitting, submit_secret, cancelling, cancel_secret) = (cluster.clone(), secret.clone(), cluster.clone(), secret);
    let dashboard = cluster;
    Router::new()
        .route("/", get(move || async move { Html(render_page(&page)) }))
        .route(
            "/api/jobs",
            get(move || async move { answer(listed(&jobs)) })
                .post(move |headers: HeaderMap, body: Body| submit(submitting.clone(), submit_secret.clone(), headers, body)),
        )
        .route("/api/jobs/{id}", get(move |Path(id): Path<String>| async move { answer(parse(&id).and_then(|id| job.job(id))) }))
        .route("/api/jobs/{id}/status", get(move |Path(id): Path<String>| async move { running_status(&status, &id) }))
        .route("/jobs/{id}/", get(|| async { Html(crate::http::DASHBOARD) }))
        .route("/jobs/{id}/api/status", get(move |Path(id): Path<String>| async move { running_status(&dashboard, &id) }))
        .route(
            "/api/jobs/{id}/cancel",
            post(move |Path(id): Path<String>, headers: HeaderMap| cancel(cancelling.clone(), cancel_secret.clone(), id, headers)),
        )
        .route("/api/workers", get(move || async move { Json(workers.workers()) }))
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], render_metrics(&metrics)).into_response() }),
        )
}

/// A running job's full status document, or 404.
fn running_status(cluster: &Cluster, id: &str) -> Response {
    let handle = parse(id).and_then(|id| cluster.job_handle(id).ok_or_else(|| format!("{id} is not running")));
    answer(handle.map(|handle| handle.status().report()))
}

/// `POST /api/jobs`: the body's submission, once the bearer is checked.
async fn submit(cluster: Arc<Cluster>, secret: Arc<Option<Secret>>, headers: HeaderMap, body: Body) -> Response {
    if let Some(refused) = unauthorized(secret.as_ref().as_ref(), &headers) {
        return refused;
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY_BYTES} bytes"));
    }
    let bytes = match tokio::time::timeout(BODY_READ_LIMIT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("cannot read the body (at most {MAX_BODY_BYTES} bytes): {e}")),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, format!("the body took longer than {} s to arrive", BODY_READ_LIMIT.as_secs())),
    };
    let submission: Submission = match serde_json::from_slice(&bytes) {
        Ok(submission) => submission,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a submission (JSON, as `mr submit` sends): {e}")),
    };
    let result = blocking(cluster, move |cluster| cluster.submit(submission)).await.and_then(|submitted| submitted);
    match result {
        Ok(id) => (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response(),
        Err(why) => {
            tracing::info!("refused a job submitted over HTTP: {why}");
            error(StatusCode::BAD_REQUEST, why)
        }
    }
}

/// `POST /api/jobs/{id}/cancel`: 404 for no such job, 409 for one that
/// cannot be cancelled (it has ended, or the cluster is stopping).
async fn cancel(cluster: Arc<Cluster>, secret: Arc<Option<Secret>>, id: String, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(secret.as_ref().as_ref(), &headers) {
        return refused;
    }
    let id = match parse(&id) {
        Ok(id) => id,
        Err(why) => return error(StatusCode::NOT_FOUND, why),
    };
    let result = blocking(cluster, move |cluster| {
        cluster.job(id).map_err(|why| (StatusCode::NOT_FOUND, why))?;
        cluster.cancel(id).map_err(|why| (StatusCode::CONFLICT, why))?;
        cluster.job(id).map_err(|why| (StatusCode::INTERNAL_SERVER_ERROR, why))
    })
    .await
    .unwrap_or_else(|why| Err((StatusCode::INTERNAL_SERVER_ERROR, why)));
    match result {
        Ok(job) => Json(job).into_response(),
        Err((code, why)) => error(code, why),
    }
}

/// Runs `f` on a blocking thread, as the RPC API does: admission and the
/// history wait on the file system.
async fn blocking<R: Send + 'static>(cluster: Arc<Cluster>, f: impl FnOnce(&Arc<Cluster>) -> R + Send + 'static) -> Result<R, String> {
    tokio::task::spawn_blocking(move || f(&cluster)).await.map_err(|e| format!("the cluster failed to answer: {e}"))
}

/// The answer to a request whose `headers` do not carry `secret` as their
/// bearer credential; `None` if they do.
fn unauthorized(secret: Option<&Secret>, headers: &HeaderMap) -> Option<Response> {
    let Some(secret) = secret else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "this cluster has no token, so it takes no changes over HTTP (anyone on its machine could make them): start it with --token-file FILE, or use mr".into(),
        ));
    };
    let presented = headers.get(header::AUTHORIZATION).map(|value| value.as_bytes()).and_then(|value| {
        let (scheme, rest) = value.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
    });
    let why = match presented {
        Some(token) if secret.matches_bearer(token) => return None,
        Some(_) => "the bearer token is not the cluster's",
        None => "changes need the cluster's token (its --token-file's content) as 'Authorization: Bearer TOKEN'",
    };
    let mut refused = error(StatusCode::UNAUTHORIZED, why.into());
    refused.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    Some(refused)
}

/// `code` with `{"error": why}`, `why` on one line.
fn error(code: StatusCode, why: String) -> Response {
    let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
    (code, Json(serde_json::json!({ "error": why }))).into_response()
}

fn listed(cluster: &Cluster) -> Result<Vec<JobInfo>, String> {
    cluster.jobs(ListFilter { finished: true, limit: Some(FINISHED_SHOWN) })
}

fn parse(id: &str) -> Result<JobId, String> {
    id.parse::<JobId>().map_err(|e| e.to_string())
}

/// JSON, or 404 with the reason.
fn answer<T: serde::Serialize>(result: Result<T, String>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(why) => (StatusCode::NOT_FOUND, why).into_response(),
    }
}

/// The cluster in the Prometheus text format.
pub fn render_metrics(cluster: &Cluster) -> String {
    let mut out = Exposition::default();
    let jobs = cluster.jobs(ListFilter { finished: false, limit: None }).unwrap_or_default();
    out.family("mapreduce_cluster_jobs", "gauge", "Unfinished jobs by state.");
    for state in [JobState::Queued, JobState::Running] {
        out.sample("mapreduce_cluster_jobs", &[("state", state.as_str())], jobs.iter().filter(|job| job.state == state).count() as f64);
    }
    let workers = cluster.workers();
    out.family("mapreduce_cluster_workers", "gauge", "Long-lived workers connected.");
    out.sample("mapreduce_cluster_workers", &[], workers.len() as f64);
    out.family("mapreduce_worker_slots", "gauge", "Tasks a worker runs at once.");
    for worker in &workers {
        out.sample("mapreduce_worker_slots", &[("worker", &worker.id)], f64::from(worker.slots));
    }
    out.family("mapreduce_worker_accepts_tasks", "gauge", "1 while a worker is under its load limits.");
    for worker in &workers {
        out.sample("mapreduce_worker_accepts_tasks", &[("worker", &worker.id)], u64::from(worker.over_limit.is_none()) as f64);
    }
    let loads: Vec<_> = workers.iter().filter_map(|worker| worker.load.map(|load| (worker.id.as_str(), load))).collect();
    out.family("mapreduce_worker_load_average", "gauge", "A worker's machine's one-minute load average.");
    for (id, load) in &loads {
        out.sample("mapreduce_worker_load_average", &[("worker", id)], load.load_average);
    }
    out.family("mapreduce_worker_free_memory_bytes", "gauge", "Memory available on a worker's machine.");
    for (id, load) in &loads {
        out.sample("mapreduce_worker_free_memory_bytes", &[("worker", id)], load.free_memory_bytes as f64);
    }
    let memory: Vec<(&str, _)> = workers.iter().map(|worker| (worker.id.as_str(), worker.memory)).collect();
    crate::metrics::worker_memory(&mut out, &memory);
    out.family("mapreduce_worker_free_disk_bytes", "gauge", "Free space in a worker's work directory.");
    for (id, load) in &loads {
        out.sample("mapreduce_worker_free_disk_bytes", &[("worker", id)], load.free_disk_bytes as f64);
    }
    out.into_text()
}

/// Refreshes the page's tables every 2 s by fetching the page again and
/// swapping them in. Not `<meta http-equiv="refresh">`: a reload is a new
/// navigation, which loses the reader's scroll position and never lets a
/// headless browser's virtual time run out (`--dump-dom` then never
/// returns); a fetch is an ordinary request, as the job dashboard polls.
const REFRESH_SCRIPT: &str = r#"<script>
async function refresh() {
  try {
    const response = await fetch("/", { cache: "no-store" });
    if (response.ok) {
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("tables");
      if (fresh) document.getElementById("tables").replaceWith(fresh);
    }
  } catch (e) {}
  setTimeout(refresh, 2000);
}
setTimeout(refresh, 2000);
</script>"#;

/// The front page: two tables, every text escaped.
fn render_page(cluster: &Cluster) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <title>MapReduce cluster</title><style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}</style></head><body>\
         <h1>MapReduce cluster</h1><main id=\"tables\"><h2>Jobs</h2><table><tr><th>id</th><th>state</th><th>priority</th><th>progress</th><th>waiting</th><th>output</th></tr>",
    );
    match listed(cluster) {
        Ok(jobs) => jobs.iter().for_each(|job| job_row(&mut page, job)),
        Err(why) => {
            let _ = write!(page, "<tr><td colspan=6>{}</td></tr>", escape(&why));
        }
    }
    page.push_str("</table><h2>Workers</h2><table><tr><th>id</th><th>slots</th><th>labels</th><th>load</th><th>free memory</th><th>peak memory</th><th>state</th></tr>");
    cluster.workers().iter().for_each(|worker| worker_row(&mut page, worker));
    page.push_str("</table></main><p>JSON: <a href=\"/api/jobs\">/api/jobs</a>, <a href=\"/api/workers\">/api/workers</a>; <a href=\"/metrics\">/metrics</a></p>");
    page.push_str(REFRESH_SCRIPT);
    page.push_str("</body></html>");
    page
}

fn job_row(page: &mut String, job: &JobInfo) {
    let progress = job.progress.map_or_else(String::new, |p| format!("maps {}/{}, reduces {}/{}", p.maps_done, p.maps, p.reduces_done, p.reduces));
    // A running job's dashboard; any job's record.
    let link = match job.state {
        JobState::Running => format!("/jobs/{}/", job.id.0),
        _ => format!("/api/jobs/{}", job.id.0),
    };
    let _ = write!(
        page,
        "<tr id=\"{}\" class=\"{}\"><td><a href=\"{link}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        job.id,
        job.state,
        job.id,
        job.state,
        job.priority,
        progress,
        escape(&job.waiting.join("; ")),
        escape(&job.output_dir.to_string_lossy())
    );
}

fn worker_row(page: &mut String, worker: &WorkerInfo) {
    let labels = worker.labels.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let (load, memory) = worker
        .load
        .map_or((String::new(), String::new()), |load| (format!("{:.2}", load.load_average), format!("{} MiB", load.free_memory_bytes >> 20)));
    let peak = worker.memory.peak_rss_bytes.map_or(String::new(), |peak| format!("{} MiB", peak >> 20));
    let _ = write!(
        page,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{load}</td><td>{memory}</td><td>{peak}</td><td>{}</td></tr>",
        escape(&worker.id),
        worker.slots,
        escape(&labels),
        escape(worker.over_limit.as_deref().unwrap_or("takes tasks"))
    );
}

/// `text` safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
