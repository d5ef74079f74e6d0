//! `mr-master`: the coordinator. Parses flags, resolves inputs, binds, and
//! runs [`mapreduce::coordinator::run`] until the job ends.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use mapreduce::cli::{self, JobFlags};
use mapreduce::coordinator::{CoordinatorConfig, Job};
use mapreduce::http;
use mapreduce::plugin::Plugin;
use mapreduce::progress::{self, ProgressMode};
use mapreduce::rpc::JobApp;
use mapreduce::summary::JobSummary;
use mapreduce::Params;
use tokio::sync::Notify;
use tracing::{Instrument, Span};

/// Coordinate a MapReduce job: split the inputs into map tasks and reduce
/// tasks and hand them to `mr-worker` processes over RPC. Exits 0 once every
/// output file `mr-out-<r>` is final.
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

fn main() -> ExitCode {
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

/// The plugin `--app` names, checked to be a plugin of this build's ABI,
/// with what workers are told of it.
fn job_app(app: &str) -> anyhow::Result<(PathBuf, JobApp)> {
    let plugin = Plugin::open(app)?;
    let path = std::path::absolute(plugin.path()).with_context(|| format!("--app {app}"))?;
    let sha256 = mapreduce::plugin::file_sha256(&path).with_context(|| format!("reading the app {}", path.display()))?;
    let size = std::fs::metadata(&path).with_context(|| format!("reading the app {}", path.display()))?.len();
    let file_name = path.file_name().map_or_else(|| app.to_owned(), |n| n.to_string_lossy().into_owned());
    Ok((path, JobApp { file_name, sha256, size }))
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    args.job.check().map_err(anyhow::Error::msg)?;
    let inputs = mapreduce::inputs::resolve_inputs(&args.job.inputs)?;
    let secret = mapreduce::cli::read_secret(args.token_file.as_deref(), args.no_tls).map_err(anyhow::Error::msg)?;
    let app = args.job.app.as_deref().map(job_app).transpose()?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if secret.is_none() && !addr.ip().is_loopback() {
        bail!("listening on {addr}, which other machines can reach, needs a shared secret: give --token-file FILE (or MR_TOKEN_FILE), and the same file to every worker");
    }
    let output_dir = &args.job.output_dir;
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
        output_dir: job.output_dir,
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
    Ok(())
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
