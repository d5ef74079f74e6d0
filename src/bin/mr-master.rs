//! `mr-master`: the coordinator. Parses flags, resolves inputs, binds, and
//! runs [`mapreduce::coordinator::run`] until the job ends; with `--serve`,
//! a standing cluster that runs the jobs `mr submit` sends it, until
//! stopped (see [`ServeArgs`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use mapreduce::cli::{self, JobFlags};
use mapreduce::coordinator::{CoordinatorConfig, Job};
use mapreduce::http;
use mapreduce::job_dir;
use mapreduce::progress::{self, ProgressMode};
use mapreduce::remote::{self, ObjectUrl};
use mapreduce::remote_output;
use mapreduce::summary::JobSummary;
use mapreduce::Params;
use tokio::sync::Notify;
use tracing::{Instrument, Span};

/// Coordinate a MapReduce job: split the inputs into map tasks and reduce
/// tasks and hand them to `mr-worker` processes over RPC. Exits 0 once every
/// output file `mr-out-<r>` is final. `mr-master --serve --state-dir DIR`
/// runs a standing cluster instead (see `mr-master --serve --help`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve RPC on; port 0 picks a free port. The bound address
    /// is printed on stdout.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7878")]
    listen: String,

    /// File holding the job's shared secret (at least 16 bytes; trailing
    /// whitespace ignored). Every worker must be given the same file: each
    /// connection proves it knows the secret without sending it, and is
    /// encrypted (TLS 1.3). Required when --listen is not a loopback
    /// address.
    #[arg(long, value_name = "FILE", env = "MR_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// With --token-file: authenticate connections but do not encrypt
    /// them (for a network nobody else can listen on; anyone who can may
    /// read and change the job's data). Give it to every worker too.
    #[arg(long, env = "MR_NO_TLS")]
    no_tls: bool,

    #[command(flatten)]
    job: JobFlags,

    /// Start the job over even if the output directory holds it half done
    /// (by a coordinator that was killed or interrupted). Without it, the
    /// same job (same inputs, unchanged, and settings) resumes where it was.
    #[arg(long)]
    fresh: bool,

    /// Replace what an earlier job left in the output directory (its
    /// `mr-out-*` files and `_SUCCESS`) when this job's outputs are
    /// published. Without it such a directory is refused, as Hadoop
    /// refuses an existing output directory; resuming this same job needs
    /// no flag.
    #[arg(long)]
    overwrite: bool,

    /// With an output on object storage (`--output-dir s3://BUCKET/PREFIX`):
    /// the local directory that holds the job (its journal, and the
    /// outputs until they are committed). Default: `.mr-s3/BUCKET/PREFIX`
    /// under the current directory, where a restarted master finds it.
    #[arg(long, value_name = "DIR")]
    staging_dir: Option<PathBuf>,

    /// Also write the bound address to this file (atomically) once the
    /// server accepts connections.
    #[arg(long, value_name = "PATH")]
    addr_file: Option<PathBuf>,

    /// Where the HTTP status server (dashboard, /api/status, /metrics)
    /// listens, or `off`. Default 127.0.0.1:7879; if that port is taken (say,
    /// by another job) a free port is used and printed. Port 0 picks a free
    /// port.
    #[arg(long, value_name = "HOST:PORT|off")]
    http: Option<String>,

    /// Keep the HTTP status server up this many seconds after the job ends
    /// (default: exit at once).
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = cli::parse_secs)]
    linger: Duration,

    /// No progress bars: log a progress line every few seconds instead (as
    /// when stdout or stderr is not a terminal).
    #[arg(long, short)]
    quiet: bool,

    /// Also write the end-of-job summary, as JSON, to this file.
    #[arg(long, value_name = "PATH")]
    summary_json: Option<PathBuf>,

    /// Also append the log to this file.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

/// Run a standing cluster: stay up, take jobs from `mr submit`, run several
/// at once on one pool of long-lived workers (`mr-worker --master HOST:PORT`
/// without an app), by priority and fair share. What must survive a
/// restart (the job history, in SQLite) lives in the state directory;
/// jobs that were running resume from their journals, queued ones stay
/// queued. Stops on SIGTERM or Ctrl-C, leaving running jobs to resume.
#[derive(Debug, Parser)]
#[command(name = "mr-master --serve", version)]
struct ServeArgs {
    /// Run as a standing cluster (this mode).
    #[arg(long, required = true)]
    serve: bool,

    /// Address to serve on (workers, clients and every job's traffic); port
    /// 0 picks a free port. The bound address is printed on stdout.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7878")]
    listen: String,

    /// Where the cluster keeps what must survive it: the job history
    /// (`history.sqlite`) and its lock (one cluster per directory).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,

    /// File holding the cluster's shared secret, as for one job: every
    /// worker and every `mr` client is given the same file. Required when
    /// --listen is not a loopback address.
    #[arg(long, value_name = "FILE", env = "MR_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// With --token-file: authenticate connections but do not encrypt them.
    #[arg(long, env = "MR_NO_TLS")]
    no_tls: bool,

    /// The most jobs of each priority level (high, normal, low) that run at
    /// once; more wait in the queue, in the order they were submitted.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    max_running: u32,

    /// A worker whose load average per core is above this gets no new
    /// tasks until it is back under (`off`: no limit).
    #[arg(long, value_name = "LOAD|off", env = "MR_MAX_LOAD_PER_CORE", default_value = "2", value_parser = parse_load_limit)]
    max_load_per_core: f64,

    /// A worker with less memory available than this gets no new tasks
    /// (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", env = "MR_MIN_FREE_MEMORY", default_value = "256M", value_parser = cli::parse_bytes)]
    min_free_memory: u64,

    /// A worker with less free space in its work directory than this gets
    /// no new tasks (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", env = "MR_MIN_FREE_DISK", default_value = "1G", value_parser = cli::parse_bytes)]
    min_free_disk: u64,

    /// Finished jobs kept in the history: the newest N.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    keep_jobs: usize,

    /// Finished jobs kept in the history: none that ended more than this
    /// many days ago (default: no age limit).
    #[arg(long, value_name = "DAYS")]
    keep_days: Option<f64>,

    /// Also write the bound address to this file (atomically) once the
    /// cluster accepts connections.
    #[arg(long, value_name = "PATH")]
    addr_file: Option<PathBuf>,

    /// Where the cluster's status pages (jobs, workers, /api/jobs,
    /// /api/workers, /metrics) listen, or `off`. Default 127.0.0.1:7879; if
    /// that port is taken a free port is used and printed.
    #[arg(long, value_name = "HOST:PORT|off")]
    http: Option<String>,

    /// Also append the log to this file.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

/// `--max-load-per-core`: a positive number, or `off`.
fn parse_load_limit(text: &str) -> Result<f64, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(f64::INFINITY);
    }
    match text.parse::<f64>() {
        Ok(limit) if limit.is_finite() && limit > 0.0 => Ok(limit),
        _ => Err(format!("'{text}' is neither 'off' nor a positive load per core (e.g. 2)")),
    }
}

fn main() -> ExitCode {
    // The cluster's flags are another set: no job is given on its command line.
    if std::env::args_os().skip(1).any(|arg| arg == "--serve") {
        return serve_main(ServeArgs::parse());
    }
    let args = Args::parse();
    if let Err(e) = mapreduce::logging::init(args.log_file.as_deref()) {
        let path = args.log_file.as_deref().unwrap_or(Path::new("")).display();
        eprintln!("mr-master: error: cannot open log file {path}: {e}");
        return ExitCode::FAILURE;
    }
    let _span = tracing::info_span!("master").entered();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mr-master: error: {}", mapreduce::errors::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(mut args: Args) -> anyhow::Result<()> {
    args.job.check().map_err(anyhow::Error::msg)?;
    let inputs = mapreduce::inputs::resolve_inputs(&args.job.inputs)?;
    let secret = mapreduce::cli::read_secret(args.token_file.as_deref(), args.no_tls).map_err(anyhow::Error::msg)?;
    let app = args.job.app.as_deref().map(mapreduce::coordinator::job_app).transpose().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if secret.is_none() && !addr.ip().is_loopback() {
        bail!("listening on {addr}, which other machines can reach, needs a shared secret: give --token-file FILE (or MR_TOKEN_FILE), and the same file to every worker");
    }
    // Outputs on object storage: the job is staged in a local directory,
    // and committed under the prefix once done.
    let object_storage = match remote::is_url(&args.job.output_dir) {
        true => Some(ObjectUrl::parse(&args.job.output_dir.to_string_lossy())?),
        false => None,
    };
    if let Some(prefix) = &object_storage {
        args.job.output_dir = args.staging_dir.clone().unwrap_or_else(|| remote_output::staging_dir(prefix));
    }
    let staged = object_storage.is_some().then(|| args.job.output_dir.clone());
    let output_dir = &args.job.output_dir;
    // Resuming this same job (its job directory is there) needs no --overwrite.
    if !args.overwrite && !output_dir.join(job_dir::JOB_DIR_NAME).exists() {
        let (shown, earlier) = match &object_storage {
            Some(prefix) => (PathBuf::from(prefix.to_string()), remote_output::earlier_outputs(prefix)?),
            None => (output_dir.clone(), job_dir::earlier_outputs(output_dir)),
        };
        if let Some(earlier) = earlier {
            bail!(job_dir::refuse_earlier_outputs(&shown, &earlier));
        }
    }
    if output_dir.exists() && !output_dir.is_dir() {
        bail!("output directory {}: exists and is not a directory", output_dir.display());
    }
    std::fs::create_dir_all(output_dir).with_context(|| format!("cannot create output directory {}", output_dir.display()))?;
    let http = match args.http.as_deref() {
        Some("off") => None,
        requested => Some(bind_http(requested).await?),
    };
    let job = args.job;
    let config = CoordinatorConfig {
        inputs,
        split_bytes: job.split_size,
        reduces: job.reduces,
        scheduler: job.scheduler_config(),
        params: Params::new(job.params),
        map_buffer_bytes: job.map_buffer,
        combine: !job.no_combine,
        compression: job.compress,
        output_compression: job.output_compression,
        files: mapreduce::shipped::plan(&job.files).map_err(anyhow::Error::msg)?,
        output_dir: job.output_dir,
        object_storage,
        fresh: args.fresh,
        secret,
        app,
    };
    let job = Job::plan(config)?;
    let status = job.status();
    let stop_http = Arc::new(Notify::new());
    let http_server = http.map(|(listener, url)| {
        let (status, stop) = (status.clone(), stop_http.clone());
        let server = tokio::spawn(async move { http::serve(listener, status, async move { stop.notified().await }).await });
        (server, url)
    });
    println!("listening on {addr}");
    if let Some((_, url)) = &http_server {
        println!("status page: {url}");
    }
    if let Some(path) = &args.addr_file {
        mapreduce::output::write_atomically(path, format!("{addr}\n").as_bytes())
            .with_context(|| format!("cannot write address file {}", path.display()))?;
    }

    let (job_ended, ended) = tokio::sync::oneshot::channel::<()>();
    let ended = async move {
        let _ = ended.await;
    };
    // Spawned tasks do not inherit the `master` span that prefixes log lines.
    let progress = tokio::spawn(progress::show(status.clone(), ProgressMode::choose(args.quiet), ended).instrument(Span::current()));
    let result = job.run(listener, cli::termination_signal()).await;
    // Stop the display, and let it clear its bars before the summary.
    let _ = job_ended.send(());
    let _ = progress.await;

    let outputs = result.as_ref().map(|report| report.outputs.clone()).unwrap_or_default();
    print_summary(&JobSummary::new(&status.report(), &outputs), args.summary_json.as_deref())?;
    if let Some((server, url)) = http_server {
        linger(args.linger, &url).await;
        stop_http.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    result?;
    if let Some(staged) = staged {
        remove_empty_staging(&staged);
    }
    Ok(())
}

/// Removes a staging directory the job has left empty, and the folders
/// above it (`.mr-s3/BUCKET/...`) that only held it.
fn remove_empty_staging(staged: &Path) {
    let mut dir = Some(staged);
    while let Some(empty) = dir.filter(|dir| !dir.as_os_str().is_empty() && std::fs::remove_dir(dir).is_ok()) {
        dir = empty.parent();
    }
}

fn serve_main(args: ServeArgs) -> ExitCode {
    let job_logs = match mapreduce::cluster::job_logs::JobLogs::new(&args.state_dir) {
        Ok(layer) => layer,
        Err(e) => {
            eprintln!("mr-master: error: cannot make the job logs' directory in {}: {e}", args.state_dir.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = mapreduce::logging::init_with(args.log_file.as_deref(), Some(Box::new(job_logs))) {
        let path = args.log_file.as_deref().unwrap_or(Path::new("")).display();
        eprintln!("mr-master: error: cannot open log file {path}: {e}");
        return ExitCode::FAILURE;
    }
    let _span = tracing::info_span!("cluster").entered();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mr-master: error: {}", mapreduce::errors::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// How long a stopping cluster waits for its engines to stop.
const STOP_WAIT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use mapreduce::cluster::{queue::MaxRunning, registry::Cluster, registry::ClusterConfig, workers::LoadLimits};
    let secret = cli::read_secret(args.token_file.as_deref(), args.no_tls).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if secret.is_none() && !addr.ip().is_loopback() {
        bail!("listening on {addr}, which other machines can reach, needs a shared secret: give --token-file FILE (or MR_TOKEN_FILE), and the same file to every worker and client");
    }
    let keep_for = args.keep_days.map(|days| Duration::try_from_secs_f64(days * 86_400.0)).transpose().context("--keep-days")?;
    let config = ClusterConfig {
        state_dir: args.state_dir.clone(),
        max_running: MaxRunning::each(args.max_running),
        load_limits: LoadLimits {
            max_load_per_core: args.max_load_per_core,
            min_free_memory_bytes: args.min_free_memory,
            min_free_disk_bytes: args.min_free_disk,
        },
        heartbeat_interval: Duration::from_secs(1),
        keep_jobs: Some(args.keep_jobs),
        keep_for,
    };
    let cluster = Cluster::open(config)?;
    // Planning the jobs it takes up reads their journals.
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start_ready()).await.context("starting the jobs taken up")?;
    let expiring = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(cluster.heartbeat_interval());
            loop {
                ticker.tick().await;
                cluster.expire_workers();
            }
        })
    };
    let stop_http = Arc::new(Notify::new());
    if args.http.as_deref() != Some("off") {
        let (listener, url) = bind_http(args.http.as_deref()).await?;
        let (router, stop) = (mapreduce::cluster::status_page::router(cluster.clone(), secret.clone()), stop_http.clone());
        tokio::spawn(async move { http::serve_routes(listener, router, async move { stop.notified().await }).await });
        println!("status page: {url}");
    }
    println!("cluster listening on {addr} (state in {})", args.state_dir.display());
    if let Some(path) = &args.addr_file {
        mapreduce::output::write_atomically(path, format!("{addr}\n").as_bytes())
            .with_context(|| format!("cannot write address file {}", path.display()))?;
    }
    let serving = mapreduce::cluster::server::serve(listener, cluster.clone(), secret);
    let result = tokio::select! {
        result = serving => result.context("the listener failed"),
        () = cli::termination_signal() => Ok(()),
    };
    tracing::info!("stopping: running jobs are kept to resume at the next start");
    expiring.abort();
    stop_http.notify_one();
    cluster.stop_all();
    let give_up = tokio::time::Instant::now() + STOP_WAIT;
    while !cluster.engines_stopped() && tokio::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    result
}

/// Prints the summary on stdout and, if asked, writes it as JSON.
fn print_summary(summary: &JobSummary, json_path: Option<&Path>) -> anyhow::Result<()> {
    print!("{}", summary.render());
    if let Some(path) = json_path {
        let json = serde_json::to_vec_pretty(summary).context("encoding the summary")?;
        mapreduce::output::write_atomically(path, &json).with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(())
}

/// Keeps the status page up for `how_long` after the job (`--linger`), or
/// until Ctrl-C.
async fn linger(how_long: Duration, url: &str) {
    if how_long.is_zero() {
        return;
    }
    println!("status page stays up for {} s at {url}", how_long.as_secs_f64());
    tokio::select! {
        () = tokio::time::sleep(how_long) => {}
        () = cli::termination_signal() => {}
    }
}

/// Binds the status server where asked (or at its default, falling back to
/// a free port); returns it with its URL.
async fn bind_http(requested: Option<&str>) -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let (listener, fell_back) =
        http::bind(requested).await.with_context(|| format!("cannot serve the status page on {}", requested.unwrap_or(http::DEFAULT_ADDR)))?;
    let url = http::url(listener.local_addr().context("reading the status server's address")?);
    if fell_back {
        tracing::warn!("{} is taken (another job?); serving the status page at {url} instead", http::DEFAULT_ADDR);
    }
    Ok((listener, url))
}
