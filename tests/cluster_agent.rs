//! The long-lived worker (`mr-worker` without APP, pointed at a cluster)
//! against a stand-in for the cluster: the test's own listener answers the
//! handshake as a cluster, serves the cluster's API (`C`: join, load
//! heartbeats, which job a free slot serves) with a minimal implementation,
//! and hands each job's connections (`J` + id) to that job's engine, as
//! `mr-master --serve` does. One real worker process runs two jobs at once
//! with the same app, which it fetches once; SIGTERM then drains it.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use mapreduce::cluster::api::{AgentReply, ClusterApi, JobInfo, JoinOffer, ListFilter, Submission, Welcome, WorkerInfo};
use mapreduce::cluster::queue::JobId;
use mapreduce::cluster::workers::Load;
use mapreduce::coordinator::{CoordinatorConfig, Job, JobHandle};
use mapreduce::handshake::{self, ServerKind};
use mapreduce::rpc::JobApp;
use mapreduce::scheduler::SchedulerConfig;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use common::*;

/// A job over `inputs` (absolute) writing to `output_dir`, naming `app`
/// for workers to fetch.
fn config(inputs: &[std::path::PathBuf], output_dir: std::path::PathBuf, app: (std::path::PathBuf, JobApp)) -> CoordinatorConfig {
    CoordinatorConfig {
        inputs: mapreduce::inputs::resolve_inputs(inputs).expect("the test's inputs"),
        split_bytes: 0,
        reduces: 3,
        output_dir,
        object_storage: None,
        scheduler: SchedulerConfig { task_timeout: Duration::from_secs(5), ..SchedulerConfig::default() },
        params: mapreduce::Params::default(),
        map_buffer_bytes: 1 << 20,
        combine: true,
        compression: Default::default(),
        output_compression: Default::default(),
        files: Vec::new(),
        fresh: false,
        app: Some(app),
        secret: None,
    }
}

/// What the stand-in saw of its workers.
#[derive(Default)]
struct Seen {
    joins: Vec<JoinOffer>,
    loads: Vec<Option<Load>>,
}

/// The stand-in's cluster API: every worker is welcome, and a free slot
/// is offered the unfinished jobs in turn (a real cluster offers only jobs
/// with a ready task; here the job answers `Wait` when it has none).
#[derive(Clone)]
struct StandIn {
    jobs: Arc<Vec<(JobId, Arc<AtomicBool>)>>,
    turn: Arc<AtomicU64>,
    seen: Arc<Mutex<Seen>>,
    /// A job offered first whenever the worker does not decline it, which
    /// has no engine: its session cannot open.
    broken: Option<JobId>,
    /// With no job left, `next_job` answers at once (as a cluster does to
    /// a worker that has not joined), not after [`POLL_WAIT`].
    answer_at_once: bool,
    /// Every `next_job`'s `declined`.
    declines: Arc<Mutex<Vec<Vec<JobId>>>>,
}

impl StandIn {
    fn new(jobs: Vec<(JobId, Arc<AtomicBool>)>) -> StandIn {
        StandIn { jobs: Arc::new(jobs), turn: Arc::default(), seen: Arc::default(), broken: None, answer_at_once: false, declines: Arc::default() }
    }
}

impl ClusterApi for StandIn {
    async fn submit(self, _: Context, _: Submission) -> Result<JobId, String> {
        Err("not in the stand-in".into())
    }
    async fn job(self, _: Context, _: JobId) -> Result<JobInfo, String> {
        Err("not in the stand-in".into())
    }
    async fn jobs(self, _: Context, _: ListFilter) -> Result<Vec<JobInfo>, String> {
        Err("not in the stand-in".into())
    }
    async fn cancel(self, _: Context, _: JobId) -> Result<JobInfo, String> {
        Err("not in the stand-in".into())
    }
    async fn workers(self, _: Context) -> Vec<WorkerInfo> {
        Vec::new()
    }
    async fn logs(self, _: Context, _: JobId, _: Option<String>) -> Result<Vec<String>, String> {
        Err("not in the stand-in".into())
    }
    async fn join(self, _: Context, offer: JoinOffer) -> Result<Welcome, String> {
        self.seen.lock().unwrap().joins.push(offer);
        Ok(Welcome { heartbeat_interval: Duration::from_millis(200) })
    }
    async fn agent_heartbeat(self, _: Context, load: Option<Load>, _memory: mapreduce::memory_budget::WorkerMemory) -> AgentReply {
        self.seen.lock().unwrap().loads.push(load);
        AgentReply::Continue
    }
    async fn next_job(self, _: Context, declined: Vec<JobId>) -> Option<JobId> {
        self.declines.lock().unwrap().push(declined.clone());
        if let Some(broken) = self.broken.filter(|broken| !declined.contains(broken)) {
            return Some(broken);
        }
        let running: Vec<JobId> = self.jobs.iter().filter(|(_, done)| !done.load(Ordering::Acquire)).map(|(id, _)| *id).collect();
        if running.is_empty() {
            if !self.answer_at_once {
                tokio::time::sleep(mapreduce::rpc::POLL_WAIT).await;
            }
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::AcqRel) as usize;
        running.get(turn % running.len()).copied()
    }
}

/// Accepts connections as a cluster: `C` to the stand-in's API, `J` + id
/// to that job's engine; anything else is closed.
async fn serve_as_cluster(listener: TcpListener, api: StandIn, engines: Arc<HashMap<u64, JobHandle>>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (api, engines) = (api.clone(), engines.clone());
        tokio::spawn(async move {
            let Ok((mut stream, identity)) = handshake::accept_as(ServerKind::Cluster, stream, None, |_| Ok(())).await else { return };
            match stream.read_u8().await {
                Ok(mapreduce::route::SERVICE_CLUSTER) => {
                    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
                    BaseChannel::with_defaults(transport)
                        .execute(api.serve())
                        .for_each_concurrent(None, |request| async move {
                            tokio::spawn(request);
                        })
                        .await;
                }
                Ok(mapreduce::route::SERVICE_JOB) => {
                    let Ok(job) = mapreduce::route::read_job(&mut stream).await else { return };
                    if let Some(engine) = engines.get(&job) {
                        let _ = engine.serve_connection(stream, identity, peer.to_string()).await;
                    }
                }
                _ => {}
            }
        });
    }
}

/// The app the jobs name, as `mr-master --app` describes it.
fn job_app(name: &str) -> (std::path::PathBuf, JobApp) {
    let path = plugin(name);
    let sha256 = mapreduce::plugin::file_sha256(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
    (path.clone(), JobApp { file_name, sha256, size })
}

#[test]
fn a_long_lived_worker_runs_two_jobs_fetches_their_app_once_and_drains_on_sigterm() {
    let dir = TestDir::new("cluster-agent");
    let inputs = write_word_inputs(&dir, 4);
    let (first, second) = inputs.split_at(2);
    let paths = |names: &[String]| names.iter().map(|name| dir.join(name)).collect::<Vec<_>>();
    let refs = |names: &[String]| names.iter().map(String::clone).collect::<Vec<_>>();
    let expected: Vec<Vec<u8>> = [first, second]
        .iter()
        .map(|names| reference_output(dir.path(), "wordcount", &refs(names).iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    let outs = [dir.join("out-1"), dir.join("out-2")];
    let jobs = [
        Job::plan(config(&paths(first), outs[0].clone(), job_app("wordcount"))).expect("planning job 1"),
        Job::plan(config(&paths(second), outs[1].clone(), job_app("wordcount"))).expect("planning job 2"),
    ];
    let engines: Arc<HashMap<u64, JobHandle>> = Arc::new(jobs.iter().zip(1..).map(|(job, id)| (id, job.handle())).collect());
    let done: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::default()).collect();
    let api = StandIn::new(done.iter().zip(1..).map(|(done, id)| (JobId(id), done.clone())).collect());

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepting = runtime.spawn(serve_as_cluster(listener, api.clone(), engines));
    let mut agent = {
        let mut cmd = std::process::Command::new(worker_bin());
        cmd.args(["--master", &addr, "--slots", "2", "--label", "zone=a", "--label", "gpu", "--work-dir"]).arg(dir.path());
        Proc::spawn("agent", cmd, dir.path())
    };
    // An APP for a cluster is refused: its jobs name theirs.
    let mut with_app = start_worker("with-app", dir.path(), &addr, "wordcount");
    let refused = with_app.expect_exit_code(1);

    let results = runtime.block_on(async {
        let runs = jobs.into_iter().zip(done.iter().cloned()).map(|(job, done)| async move {
            let result = job.run_without_listener(std::future::pending()).await;
            done.store(true, Ordering::Release);
            result
        });
        tokio::time::timeout(PROCESS_TIMEOUT, futures::future::join_all(runs)).await
    });
    let context = |agent: &Proc| format!("{}\n{}", agent.describe(), dir.listing());
    let results = results.unwrap_or_else(|_| panic!("the jobs did not end within {PROCESS_TIMEOUT:?}\n{}", context(&agent)));
    for (i, result) in results.into_iter().enumerate() {
        let report = result.unwrap_or_else(|e| panic!("job {} failed: {e}\n{}", i + 1, context(&agent)));
        assert_eq!(report.outputs.len(), 3);
    }
    for (out, expected) in outs.iter().zip(&expected) {
        assert_same_output(&job_output(out, 3), expected, &context(&agent));
    }
    assert!(agent.try_exit().is_none(), "the worker outlives its jobs\n{}", context(&agent));
    let loaded = || api.seen.lock().unwrap().loads.iter().any(|load| load.is_some_and(|load| load.free_disk_bytes > 0));
    wait_until(loaded, || format!("no heartbeat carried a load\n{}", context(&agent)));

    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) }, 0);
    agent.expect_success();
    accepting.abort();
    let log = agent.stderr();
    assert!(refused.contains("is a cluster"), "{refused}\n{}", with_app.describe());
    assert_eq!(log.matches("fetched the app").count(), 1, "one fetch for two jobs with the same app\n{}", context(&agent));
    assert_eq!(log.matches("session opened").count(), 2, "{}", context(&agent));
    assert!(log.contains("draining") && log.contains("drained"), "{}", context(&agent));
    let seen = api.seen.lock().unwrap();
    let offer = seen.joins.first().unwrap_or_else(|| panic!("the worker never joined\n{}", context(&agent)));
    assert_eq!(offer.slots, 2);
    let labels: Vec<String> = offer.labels.iter().map(ToString::to_string).collect();
    assert_eq!(labels, ["zone=a", "gpu"]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("mr-worker-"))
        .collect();
    assert!(leftovers.is_empty(), "the work directory outlived the worker: {leftovers:?}");
}

/// A job whose session cannot open (here: no engine behind its id) is
/// declined, so that the cluster offers another, which runs; its failure
/// is logged once however often it is offered. A slot with no job does
/// not spin even when the cluster answers `next_job` at once.
#[test]
fn a_job_that_cannot_be_served_is_declined_and_an_idle_slot_does_not_spin() {
    let dir = TestDir::new("cluster-agent-declines");
    let inputs = write_word_inputs(&dir, 2);
    let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "wordcount", &names);
    let out = dir.join("out");
    let job = Job::plan(config(&inputs.iter().map(|name| dir.join(name)).collect::<Vec<_>>(), out.clone(), job_app("wordcount"))).expect("planning");
    let engines: Arc<HashMap<u64, JobHandle>> = Arc::new(HashMap::from([(1, job.handle())]));
    let done: Arc<AtomicBool> = Arc::default();
    let broken = JobId(7);
    let api = StandIn { broken: Some(broken), answer_at_once: true, ..StandIn::new(vec![(JobId(1), done.clone())]) };

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepting = runtime.spawn(serve_as_cluster(listener, api.clone(), engines));
    let mut agent = {
        let mut cmd = std::process::Command::new(worker_bin());
        cmd.args(["--master", &addr, "--slots", "2", "--work-dir"]).arg(dir.path());
        Proc::spawn("agent", cmd, dir.path())
    };
    let context = |agent: &Proc| format!("{}\n{}", agent.describe(), dir.listing());
    let result = runtime.block_on(async {
        let run = async {
            let result = job.run_without_listener(std::future::pending()).await;
            done.store(true, Ordering::Release);
            result
        };
        tokio::time::timeout(PROCESS_TIMEOUT, run).await
    });
    let report = result
        .unwrap_or_else(|_| panic!("the job did not end within {PROCESS_TIMEOUT:?}: starved by one that cannot be served?\n{}", context(&agent)))
        .unwrap_or_else(|e| panic!("the job failed: {e}\n{}", context(&agent)));
    assert_eq!(report.outputs.len(), 3);
    assert_same_output(&job_output(&out, 3), &expected, &context(&agent));
    assert!(api.declines.lock().unwrap().iter().any(|declined| declined.contains(&broken)), "{}", context(&agent));

    // No job left, and the stand-in answers at once: the slots ask at a
    // walking pace (two slots, one round per 100 ms at most: 20 a second).
    std::thread::sleep(Duration::from_millis(500));
    let before = api.declines.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(2));
    let asked = api.declines.lock().unwrap().len() - before;
    assert!(asked <= 60, "{asked} asks in 2 s: the idle slots spin\n{}", context(&agent));

    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) }, 0);
    agent.expect_success();
    accepting.abort();
    let log = agent.stderr();
    let failures = log.lines().filter(|line| line.contains("cannot work for the job") && line.contains("job-7")).count();
    assert_eq!(failures, 1, "the failure is logged once\n{}", context(&agent));
}
