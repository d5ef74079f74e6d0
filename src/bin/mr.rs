//! `mr`: the client of a standing cluster (`mr-master --serve`). Submits
//! jobs, waits for them, looks them up by id, cancels them, and lists the
//! cluster's workers, over the cluster's API (authenticated with the same
//! token file as the workers).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use mapreduce::cli::{self, JobFlags};
use mapreduce::cluster::api::{ClusterApiClient, JobInfo, ListFilter, Submission, WorkerInfo};
use mapreduce::cluster::history::JobState;
use mapreduce::cluster::queue::{JobId, Priority};
use mapreduce::cluster::workers::Label;
use mapreduce::handshake::{self, Identity, ServerKind};
use mapreduce::route::SERVICE_CLUSTER;
use mapreduce::summary::JobSummary;
use tarpc::tokio_serde::formats::Bincode;

/// Talk to a standing MapReduce cluster (`mr-master --serve`): submit jobs,
/// follow them by id, list them and the workers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The cluster's address.
    #[arg(long, global = true, value_name = "HOST:PORT", env = "MR_MASTER", default_value = "127.0.0.1:7878")]
    master: String,

    /// File holding the cluster's shared secret (the workers' token file).
    #[arg(long, global = true, value_name = "FILE", env = "MR_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// With --token-file: the cluster does not encrypt (it runs with
    /// --no-tls).
    #[arg(long, global = true, env = "MR_NO_TLS")]
    no_tls: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a job; prints its id at once (or, with --wait, waits for it
    /// as `mr wait` does). Takes every per-job flag of mr-master.
    Submit {
        #[command(flatten)]
        job: Box<JobFlags>,
        /// The job's level in the queue: high, normal or low. A higher
        /// level's ready tasks always go first.
        #[arg(long, value_name = "LEVEL", default_value = "normal")]
        priority: Priority,
        /// The job's share of its level's slots, relative to the other
        /// running jobs of its level (fair share).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        weight: u32,
        /// A label every worker that runs the job's tasks must have: `KEY`
        /// (any value) or `KEY=VALUE` (repeatable).
        #[arg(long = "require", value_name = "KEY[=VALUE]")]
        requires: Vec<Label>,
        /// Replace the outputs a finished job left in the output directory.
        #[arg(long)]
        overwrite: bool,
        /// Take job ID's outputs as inputs too (repeatable; FILE inputs
        /// may then be left out): a job that succeeded gives them at
        /// once; for a queued or running one, this job waits, and fails if
        /// that one does not succeed.
        #[arg(long = "input-job", value_name = "ID")]
        input_jobs: Vec<JobId>,
        /// Wait for the job and exit with its status.
        #[arg(long)]
        wait: bool,
    },
    /// Wait for a job to end, showing its progress; exits 0 if it
    /// succeeded, 1 if it failed, 3 if it was cancelled.
    Wait {
        /// The job's id (`job-N` or `N`).
        id: JobId,
        /// Print the job's summary as JSON at the end instead of as text.
        #[arg(long)]
        json: bool,
    },
    /// A job's state, progress and, once it ended, its summary.
    Status {
        /// The job's id (`job-N` or `N`).
        id: JobId,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The queued and running jobs; with --all, finished ones too.
    List {
        /// Finished jobs too, the newest first.
        #[arg(long)]
        all: bool,
        /// At most this many finished jobs.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued one never runs; a running one stops and
    /// publishes nothing.
    Cancel {
        /// The job's id (`job-N` or `N`).
        id: JobId,
    },
    /// A job's log lines (the coordinator's: attempts given, failed, lost,
    /// and why), oldest first.
    Logs {
        /// The job's id (`job-N` or `N`).
        id: JobId,
        /// Only the lines about this task (`map-3`, `reduce-0`).
        #[arg(long, value_name = "TASK")]
        task: Option<String>,
    },
    /// The workers connected to the cluster, their labels and load.
    Workers {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Whether the cluster's status page answers (`GET /api/workers`, 200
    /// within 5 s): exits 0 if so, 1 with the reason if not. Needs no
    /// token: a container's health check.
    Health {
        /// The status page's address (`mr-master --serve --http`).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7879")]
        http: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mr: error: {}", mapreduce::errors::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Command::Health { http } = &args.command {
        return health(http).await;
    }
    let client = connect(&args).await?;
    match args.command {
        Command::Submit { job, priority, weight, requires, overwrite, input_jobs, wait } => {
            let submission = Submission { job: absolute_paths(*job, !input_jobs.is_empty())?, priority, weight, requires, overwrite, input_jobs };
            let id = client.submit(context(), submission).await.context("submitting")?.map_err(|why| anyhow!("the job was refused: {why}"))?;
            println!("{id}");
            if wait {
                return wait_for(&client, id, false).await;
            }
        }
        Command::Wait { id, json } => return wait_for(&client, id, json).await,
        Command::Status { id, json } => {
            let info = job(&client, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", describe(&info));
            }
        }
        Command::List { all, limit, json } => {
            let jobs = client.jobs(context(), ListFilter { finished: all, limit }).await.context("listing jobs")?.map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                print!("{}", job_table(&jobs));
            }
        }
        Command::Cancel { id } => {
            let info = client.cancel(context(), id).await.context("cancelling")?.map_err(anyhow::Error::msg)?;
            println!("{id}: {}", if info.state.is_final() { info.state.to_string() } else { "cancelling".to_owned() });
        }
        Command::Logs { id, task } => {
            let lines = client.logs(context(), id, task).await.context("asking for the log")?.map_err(anyhow::Error::msg)?;
            for line in lines {
                println!("{}", shown(&line));
            }
        }
        // Answered before connecting, above.
        Command::Health { .. } => {}
        Command::Workers { json } => {
            let workers = client.workers(context()).await.context("listing workers")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&workers)?);
            } else {
                print!("{}", worker_table(&workers));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A call's context: the cluster answers at once, except a submission's
/// admission, which reads the inputs.
fn context() -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + Duration::from_secs(120);
    ctx
}

/// Connects to the cluster's API, with the handshake the workers use.
async fn connect(args: &Args) -> anyhow::Result<ClusterApiClient> {
    let secret = cli::read_secret(args.token_file.as_deref(), args.no_tls).map_err(anyhow::Error::msg)?;
    let identity = Identity::new(format!("mr-client:{}", std::process::id()));
    let (stream, kind) = handshake::dial_learning(&args.master, secret.as_ref(), &identity, SERVICE_CLUSTER, Some(Duration::from_secs(10)))
        .await
        .map_err(|e| match e.is_transient() {
            true => anyhow!("cannot reach the cluster at {}: {e}", args.master),
            false => anyhow!("the cluster at {} refused this client: {e}", args.master),
        })?;
    if kind != ServerKind::Cluster {
        bail!("{} is a one-job mr-master, not a cluster: start a cluster with mr-master --serve --state-dir DIR", args.master);
    }
    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
    Ok(ClusterApiClient::new(tarpc::client::Config::default(), transport).spawn())
}

/// The job's paths made absolute here, where they were given: the cluster
/// may run in another directory. An app given as a path is made absolute
/// too; a bare NAME is looked up beside the cluster's executable. Inputs
/// on object storage (`s3://`) are sent as they are.
fn absolute_paths(mut job: JobFlags, has_input_jobs: bool) -> anyhow::Result<JobFlags> {
    if mapreduce::remote::is_url(&job.output_dir) {
        anyhow::bail!(
            "--output-dir {}: a cluster's jobs read inputs on object storage (s3://) but write their outputs to a directory; a job of its own (mr-master) can write them there",
            job.output_dir.display()
        );
    }
    let absolute = |path: &Path| match mapreduce::remote::is_url(path) {
        true => Ok(path.to_owned()),
        false => std::path::absolute(path).with_context(|| format!("{}", path.display())),
    };
    job.inputs = job.inputs.iter().map(|path| absolute(path)).collect::<anyhow::Result<_>>()?;
    job.output_dir = absolute(&job.output_dir)?;
    job.files = job.files.iter().map(|path| absolute(path)).collect::<anyhow::Result<_>>()?;
    if let Some(app) = &job.app {
        if app.contains('/') || app.ends_with(".so") {
            job.app = Some(absolute(Path::new(app))?.to_string_lossy().into_owned());
        }
    }
    match has_input_jobs {
        true => job.check_settings(),
        false => job.check().map_err(|why| format!("{why} (give input files, or --input-job ID)")),
    }
    .map_err(anyhow::Error::msg)?;
    Ok(job)
}

/// `mr health`: one `GET /api/workers` of the status page at `http`.
async fn health(http: &str) -> anyhow::Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(http).await?;
        stream.write_all(format!("GET /api/workers HTTP/1.0\r\nHost: {http}\r\n\r\n").as_bytes()).await?;
        // "HTTP/1.1 200"
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .map_err(|_| anyhow!("status page {http}: no answer within 5 s"))?
        .with_context(|| format!("status page {http}"))?;
    anyhow::ensure!(head.starts_with(b"HTTP/1.") && head.ends_with(b" 200"), "status page {http}: answered {:?}", String::from_utf8_lossy(&head));
    println!("healthy");
    Ok(ExitCode::SUCCESS)
}

async fn job(client: &ClusterApiClient, id: JobId) -> anyhow::Result<JobInfo> {
    client.job(context(), id).await.context("asking for the job")?.map_err(anyhow::Error::msg)
}

/// How often `mr wait` asks.
const WAIT_POLL: Duration = Duration::from_millis(300);

/// Waits for job `id` to end, with a progress line on a terminal; the
/// exit status follows the job's.
async fn wait_for(client: &ClusterApiClient, id: JobId, json: bool) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let info = loop {
        let info = job(client, id).await?;
        if info.state.is_final() {
            break info;
        }
        let line = progress_line(&info);
        if line != last_line {
            if terminal {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last_line = line;
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    if terminal && !last_line.is_empty() {
        eprint!("\r\x1b[2K");
    }
    if json {
        println!("{}", info.summary_json.as_deref().unwrap_or("null"));
    } else {
        print!("{}", describe(&info));
    }
    Ok(match info.state {
        JobState::Succeeded => ExitCode::SUCCESS,
        JobState::Cancelled => ExitCode::from(3),
        _ => ExitCode::FAILURE,
    })
}

/// One line on where a job is.
fn progress_line(info: &JobInfo) -> String {
    match (&info.progress, info.waiting.first()) {
        (_, Some(why)) => format!("{}: {} ({why})", info.id, info.state),
        (Some(p), None) => {
            format!("{}: {}: maps {}/{}, reduces {}/{}, {} running", info.id, info.state, p.maps_done, p.maps, p.reduces_done, p.reduces, p.running)
        }
        (None, None) => format!("{}: {}", info.id, info.state),
    }
}

/// A job, as `mr status` prints it.
fn describe(info: &JobInfo) -> String {
    let mut text = format!("{}\n", shown(&progress_line(info)));
    text += &format!("  app {}, priority {}, weight {}", info.app.as_deref().unwrap_or("-"), info.priority, info.weight);
    if !info.requires.is_empty() {
        text += &format!(", requires {}", info.requires.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
    }
    text += &format!("\n  output {}\n  submitted {}", info.output_dir.display(), ago(info.submitted_ms));
    if let Some(started) = info.started_ms {
        text += &format!(", started {}", ago(started));
    }
    if let Some(ended) = info.ended_ms {
        text += &format!(", ended {}", ago(ended));
    }
    text.push('\n');
    for why in info.waiting.iter().skip(1) {
        text += &format!("  also waiting: {why}\n");
    }
    if let Some(error) = &info.error {
        text += &format!("  {}\n", shown(error));
    }
    if let Some(summary) = info.summary_json.as_deref().and_then(|json| serde_json::from_str::<JobSummary>(json).ok()) {
        text += &summary.render();
    }
    text
}

/// Text from the cluster (another process's words: a worker's id, a log
/// line, an error) as the terminal may show it: no control characters.
fn shown(text: &str) -> String {
    mapreduce::untrusted::excerpt(text, usize::MAX)
}

/// How long ago a Unix time in milliseconds was.
fn ago(unix_ms: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(unix_ms) / 1000;
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7200 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

fn job_table(jobs: &[JobInfo]) -> String {
    let mut text = format!("{:<10} {:<10} {:<7} {:<12} {}\n", "ID", "STATE", "PRIO", "PROGRESS", "OUTPUT");
    for job in jobs {
        let progress = job.progress.map_or_else(|| "-".to_owned(), |p| format!("{}/{} {}/{}", p.maps_done, p.maps, p.reduces_done, p.reduces));
        text += &format!(
            "{:<10} {:<10} {:<7} {:<12} {}\n",
            job.id.to_string(),
            job.state.to_string(),
            job.priority.to_string(),
            progress,
            job.output_dir.display()
        );
    }
    text
}

fn worker_table(workers: &[WorkerInfo]) -> String {
    let mut text = format!("{:<24} {:>5} {:>6} {:>9} {:>9} {:<20} {}\n", "WORKER", "SLOTS", "LOAD", "FREE MEM", "PEAK MEM", "LABELS", "STATE");
    for worker in workers {
        let (load, memory) = worker
            .load
            .map_or(("-".to_owned(), "-".to_owned()), |load| (format!("{:.2}", load.load_average), format!("{} MiB", load.free_memory_bytes >> 20)));
        let peak = worker.memory.peak_rss_bytes.map_or("-".to_owned(), |peak| format!("{} MiB", peak >> 20));
        let labels = worker.labels.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let state = worker.over_limit.as_deref().unwrap_or("takes tasks");
        text +=
            &format!("{:<24} {:>5} {:>6} {:>9} {:>9} {:<20} {}\n", shown(&worker.id), worker.slots, load, memory, peak, shown(&labels), shown(state));
    }
    text
}
