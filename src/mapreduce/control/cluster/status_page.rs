//! The cluster's HTTP pages (`mr-master --serve --http`), served like a
//! job's status server ([`crate::http`]: the same connection limits), and
//! read-only like it:
//!
//! | path | what |
//! |---|---|
//! | `/` | the jobs page: queued, running and finished jobs (a running one links to its dashboard) and the workers, refreshed every 2 s |
//! | `/jobs/{id}/` | a running job's dashboard, the one-job page (it polls `/jobs/{id}/api/status`) |
//! | `/api/jobs` | the unfinished jobs, then the newest 100 finished ones (JSON, as `mr list --all --json`) |
//! | `/api/jobs/{id}` | one job (as `mr status ID --json`) |
//! | `/api/jobs/{id}/status` | a running job's full status (the one-job `/api/status` document) |
//! | `/api/workers` | the workers, their labels and load (as `mr workers --json`) |
//! | `/metrics` | Prometheus: jobs by state, each worker's load, free memory and disk, and whether it takes tasks |

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::cluster::api::{JobInfo, ListFilter, WorkerInfo};
use crate::cluster::history::JobState;
use crate::cluster::queue::JobId;
use crate::cluster::registry::Cluster;
use crate::metrics::Exposition;

/// Finished jobs the pages list.
const FINISHED_SHOWN: u32 = 100;

/// The routes above, on `cluster`.
pub fn router(cluster: Arc<Cluster>) -> Router {
    let (jobs, job, status, workers, metrics, page) = (cluster.clone(), cluster.clone(), cluster.clone(), cluster.clone(), cluster.clone(), cluster.clone());
    let dashboard = cluster;
    Router::new()
        .route("/", get(move || async move { Html(render_page(&page)) }))
        .route("/api/jobs", get(move || async move { answer(listed(&jobs)) }))
        .route("/api/jobs/{id}", get(move |Path(id): Path<String>| async move { answer(parse(&id).and_then(|id| job.job(id))) }))
        .route("/api/jobs/{id}/status", get(move |Path(id): Path<String>| async move { running_status(&status, &id) }))
        .route("/jobs/{id}/", get(|| async { Html(crate::http::DASHBOARD) }))
        .route("/jobs/{id}/api/status", get(move |Path(id): Path<String>| async move { running_status(&dashboard, &id) }))
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
    out.family("mapreduce_worker_free_disk_bytes", "gauge", "Free space in a worker's work directory.");
    for (id, load) in &loads {
        out.sample("mapreduce_worker_free_disk_bytes", &[("worker", id)], load.free_disk_bytes as f64);
    }
    out.into_text()
}

/// The front page: two tables, every text escaped.
fn render_page(cluster: &Cluster) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>MapReduce cluster</title><style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}</style></head><body>\
         <h1>MapReduce cluster</h1><h2>Jobs</h2><table><tr><th>id</th><th>state</th><th>priority</th><th>progress</th><th>waiting</th><th>output</th></tr>",
    );
    match listed(cluster) {
        Ok(jobs) => jobs.iter().for_each(|job| job_row(&mut page, job)),
        Err(why) => {
            let _ = write!(page, "<tr><td colspan=6>{}</td></tr>", escape(&why));
        }
    }
    page.push_str("</table><h2>Workers</h2><table><tr><th>id</th><th>slots</th><th>labels</th><th>load</th><th>free memory</th><th>state</th></tr>");
    cluster.workers().iter().for_each(|worker| worker_row(&mut page, worker));
    page.push_str("</table><p>JSON: <a href=\"/api/jobs\">/api/jobs</a>, <a href=\"/api/workers\">/api/workers</a>; <a href=\"/metrics\">/metrics</a></p></body></html>");
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
    let _ = write!(
        page,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{load}</td><td>{memory}</td><td>{}</td></tr>",
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
