//! A job's engine serving connections that someone else accepted and
//! authenticated, as the standing cluster's one listener will hand them to
//! each job: here a listener of the test's own runs the handshake with its
//! secret and passes each stream to the job's `JobHandle`, and real
//! `mr-worker` processes finish the job through it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mapreduce::coordinator::{ConnectionRefused, CoordinatorConfig, Job, JobHandle};
use mapreduce::handshake::{self, Identity, Secret};
use mapreduce::scheduler::SchedulerConfig;
use tokio::net::TcpListener;

use common::*;

/// The test listener's secret (the workers are given it as a token file).
const SECRET: &str = "a secret for the test's own listener";

/// A job over `inputs` (absolute) writing to `output_dir`, with no secret
/// of its own: whoever hands it connections authenticates them.
fn config(inputs: &[std::path::PathBuf], output_dir: std::path::PathBuf) -> CoordinatorConfig {
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
        app: None,
        secret: None,
    }
}

/// Accepts connections on `listener`, runs the handshake with `secret`
/// itself, and hands each admitted stream to `job`, counting them in
/// `handed`.
async fn hand_over(listener: TcpListener, secret: Secret, job: JobHandle, handed: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (secret, job, handed) = (secret.clone(), job.clone(), handed.clone());
        tokio::spawn(async move {
            let Ok((stream, identity)) = handshake::accept(stream, Some(&secret), |_| Ok(())).await else { return };
            handed.fetch_add(1, Ordering::AcqRel);
            let _ = job.serve_connection(stream, identity, peer.to_string()).await;
        });
    }
}

/// Runs the server's half of a handshake on a fresh loopback connection
/// while a client dials it as `identity`, asking for RPC; returns the
/// server's side, authenticated, and the client's (kept open).
async fn handshaken_pair(identity: &Identity) -> ((mapreduce::secure::Stream, Identity), mapreduce::secure::Stream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = async {
        let (stream, _) = listener.accept().await.unwrap();
        handshake::accept(stream, None, |_| Ok(())).await.expect("the server's half of the handshake")
    };
    let (server, client) = tokio::join!(server, handshaken(&addr, None, identity));
    (server, client.expect("the client's half of the handshake"))
}

#[test]
fn a_job_finishes_on_connections_handed_to_it_by_another_listener() {
    let dir = TestDir::new("handed");
    let inputs = write_word_inputs(&dir, 4);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "wordcount", &input_refs);
    dir.write("token", SECRET);
    let secret = Secret::from_file(&dir.join("token")).unwrap();
    let out = dir.join("out");
    let paths: Vec<_> = inputs.iter().map(|name| dir.join(name)).collect();
    let job = Job::plan(config(&paths, out.clone())).expect("planning the job");
    let handle = job.handle();
    let handed = Arc::new(AtomicUsize::new(0));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (result, mut workers, late) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepting = tokio::spawn(hand_over(listener, secret, handle.clone(), handed.clone()));
        let workers: Vec<_> =
            (0..2).map(|i| start_worker_with(&format!("worker{i}"), dir.path(), &addr, "wordcount", &["--token-file", "token"])).collect();
        let (_cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let run = job.run_without_listener(async {
            let _ = cancelled.await;
        });
        let result = tokio::time::timeout(PROCESS_TIMEOUT, run).await;
        accepting.abort();
        // After its end the job serves nothing more.
        let ((stream, identity), _client) = handshaken_pair(&Identity::new("late".to_owned())).await;
        let late = handle.serve_connection(stream, identity, "a late client".to_owned()).await;
        (result, workers, late)
    });
    let context = |workers: &[Proc]| format!("{}\n{}", workers.iter().map(Proc::describe).collect::<Vec<_>>().join("\n"), dir.listing());
    let result = result.unwrap_or_else(|_| panic!("the job did not end within {PROCESS_TIMEOUT:?}\n{}", context(&workers)));
    let report = result.unwrap_or_else(|e| panic!("the job failed: {e}\n{}", context(&workers)));
    for w in &mut workers {
        w.expect_success();
    }
    assert_eq!(report.outputs.len(), 3);
    assert_same_output(&job_output(&out, 3), &expected, &context(&workers));
    assert!(stray_files(&out).is_empty(), "left behind in the output dir: {:?}", stray_files(&out));
    assert!(handed.load(Ordering::Acquire) >= 2, "every worker came through the test's listener");
    assert!(matches!(late, Err(ConnectionRefused::JobClosed)), "a connection after the job's end: {late:?}");
}

#[test]
fn a_handed_connection_whose_worker_id_another_process_holds_is_refused() {
    let dir = TestDir::new("handed-claim");
    let inputs = write_word_inputs(&dir, 1);
    let job = Job::plan(config(&[dir.join(&inputs[0])], dir.join("out"))).expect("planning the job");
    let handle = job.handle();
    block_on(async {
        let first = Identity::new("host:1".to_owned());
        let ((stream, identity), _client) = handshaken_pair(&first).await;
        // Served until the job closes its connections: it holds the id.
        let holder = tokio::spawn({
            let handle = handle.clone();
            async move { handle.serve_connection(stream, identity, "the first".to_owned()).await }
        });
        // The holder's claim is made in its first poll, which comes first.
        tokio::task::yield_now().await;
        let impostor = Identity::new("host:1".to_owned());
        let ((stream, identity), _client) = handshaken_pair(&impostor).await;
        let refused = tokio::time::timeout(Duration::from_secs(10), handle.serve_connection(stream, identity, "the second".to_owned())).await;
        assert!(
            matches!(&refused, Ok(Err(ConnectionRefused::WorkerIdTaken { worker })) if worker == "host:1"),
            "the same id from another process: {refused:?}"
        );
        // The same process may open more connections.
        let ((stream, identity), client) = handshaken_pair(&first).await;
        let same = tokio::spawn({
            let handle = handle.clone();
            async move { handle.serve_connection(stream, identity, "the first, again".to_owned()).await }
        });
        drop(client);
        let same = tokio::time::timeout(Duration::from_secs(10), same).await.expect("a closed connection ends its service");
        assert!(matches!(same, Ok(Ok(()))), "{same:?}");
        holder.abort();
    });
    drop(job);
}
