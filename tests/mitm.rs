//! A man in the middle between a worker and the coordinator: a relay on
//! the path that reads what crosses it and changes it. It knows the
//! framework's protocol (it is public), so where the bytes are plain it
//! swaps the job's plugin for another app's, and the hash the worker checks
//! it against: without encryption (`--no-tls`) the worker runs the
//! relay's app and the job "succeeds" with its output. With the job's
//! token (TLS, the default) the same relay sees nothing it can parse, and
//! a relay that flips a byte breaks the connection: nothing of its making
//! is used.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;

const SECRET: &str = "correct horse battery staple";

/// What the relay does to the connections it carries.
#[derive(Clone)]
enum Tamper {
    /// Replace the job's plugin with `evil_plugin`, the genuine hash with
    /// the evil one wherever it appears (both ways), and the job's
    /// description of its plugin (hash, then size: bincode puts the size,
    /// as a varint, right after the hash) with the evil one's, so that the
    /// worker asks for, and takes, a plugin of the evil size.
    SwapApp { genuine_hash: String, evil_hash: String, genuine_size: u64, evil_plugin: Arc<Vec<u8>> },
    /// Flip one bit of the byte at this offset of what the coordinator sends.
    FlipByteAt(usize),
}

/// What the relay managed: counts across all its connections.
#[derive(Default)]
struct Tally {
    connections: AtomicUsize,
    encrypted: AtomicUsize,
    hashes_swapped: AtomicUsize,
    plugins_swapped: AtomicUsize,
}

/// Starts a relay to `upstream` on a free port; returns its address. Its
/// threads end with the connections (when the job's processes exit).
fn start_relay(upstream: String, tamper: Tamper) -> (String, Arc<Tally>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tally = Arc::new(Tally::default());
    let counted = tally.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let (Ok(client), Ok(server)) = (client, TcpStream::connect(&upstream)) else { continue };
            let (tamper, tally) = (tamper.clone(), counted.clone());
            std::thread::spawn(move || relay_connection(client, server, tamper, &tally));
        }
    });
    (addr, tally)
}

fn relay_connection(client: TcpStream, mut server: TcpStream, tamper: Tamper, tally: &Tally) {
    tally.connections.fetch_add(1, Ordering::SeqCst);
    let (mut to_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let mut from_client = client;
    // The server's plain preamble: "MRh3" and its flags.
    let mut preamble = [0; 5];
    if server.read_exact(&mut preamble).is_err() || to_client.write_all(&preamble).is_err() {
        return;
    }
    let encrypted = preamble[4] & 2 != 0;
    if encrypted {
        tally.encrypted.fetch_add(1, Ordering::SeqCst);
    }
    match tamper {
        Tamper::FlipByteAt(offset) => {
            std::thread::spawn(move || copy(&mut from_client, &mut to_server));
            let mut sent = preamble.len();
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = server.read(&mut buf) {
                if (sent..sent + n).contains(&offset) {
                    buf[offset - sent] ^= 0x10;
                }
                sent += n;
                if to_client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        // Nothing to parse in an encrypted stream: it passes as it is.
        Tamper::SwapApp { .. } if encrypted => {
            std::thread::spawn(move || copy(&mut from_client, &mut to_server));
            copy(&mut server, &mut to_client);
        }
        Tamper::SwapApp { genuine_hash, evil_hash, genuine_size, evil_plugin } => {
            let (service_tx, service_rx) = mpsc::channel();
            let (plugin_asked_tx, plugin_asked_rx) = mpsc::channel();
            let (evil_for_client, genuine_for_client) = (evil_hash.clone(), genuine_hash.clone());
            std::thread::spawn(move || {
                let Some(service) = client_hello_and_service(&mut from_client, &mut to_server) else { return };
                let _ = service_tx.send(service);
                let mut request = [0; 25];
                match service {
                    b'F' => {
                        while from_client.read_exact(&mut request).is_ok() {
                            let _ = plugin_asked_tx.send(request[0] == 3);
                            if to_server.write_all(&request).is_err() {
                                break;
                            }
                        }
                    }
                    _ => {
                        let _ = replacing(&mut from_client, &mut to_server, evil_for_client.as_bytes(), genuine_for_client.as_bytes());
                    }
                }
            });
            // The server's nonce (the client answers it), then its
            // admission with its tag.
            let (mut nonce, mut admission) = ([0; 32], [0; 1 + 32]);
            if server.read_exact(&mut nonce).is_err() || to_client.write_all(&nonce).is_err() {
                return;
            }
            if server.read_exact(&mut admission).is_err() || to_client.write_all(&admission).is_err() {
                return;
            }
            match service_rx.recv() {
                Ok(b'F') => {
                    for plugin_asked in plugin_asked_rx {
                        if pass_or_swap_answer(&mut server, &mut to_client, plugin_asked.then_some(&evil_plugin[..])).is_err() {
                            return;
                        }
                        tally.plugins_swapped.fetch_add(usize::from(plugin_asked), Ordering::SeqCst);
                    }
                }
                Ok(_) => {
                    let described = |hash: &str, size: u64| [hash.as_bytes(), &bincode_varint(size)].concat();
                    let (genuine, evil) = (described(&genuine_hash, genuine_size), described(&evil_hash, evil_plugin.len() as u64));
                    assert_eq!(genuine.len(), evil.len(), "the relay replaces bytes in place: both sizes take the same varint width");
                    let swapped = replacing(&mut server, &mut to_client, &genuine, &evil);
                    tally.hashes_swapped.fetch_add(swapped, Ordering::SeqCst);
                }
                Err(_) => {}
            }
        }
    }
}

/// `value` as bincode's variable-length integer (what tarpc's transport
/// writes): one byte below 251, else a marker and 2, 4 or 8 bytes.
fn bincode_varint(value: u64) -> Vec<u8> {
    match value {
        0..=250 => vec![value as u8],
        251..=0xffff => [&[251u8][..], &(value as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[252u8][..], &(value as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &value.to_le_bytes()].concat(),
    }
}

fn copy(from: &mut TcpStream, to: &mut TcpStream) {
    let _ = std::io::copy(from, to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Passes the client's plain hello on (its length is in it) and returns
/// the service byte that follows.
fn client_hello_and_service(from: &mut TcpStream, to: &mut TcpStream) -> Option<u8> {
    let mut start = [0; 4 + 1 + 32 + 16 + 1];
    from.read_exact(&mut start).ok()?;
    let mut rest = vec![0; usize::from(start[start.len() - 1]) + 32];
    from.read_exact(&mut rest).ok()?;
    to.write_all(&start).ok()?;
    to.write_all(&rest).ok()?;
    // Sent once the client has read its admission.
    let mut service = [0];
    from.read_exact(&mut service).ok()?;
    to.write_all(&service).ok()?;
    Some(service[0])
}

/// Copies `from` to `to`, writing `with` for every `pattern` (of the same
/// length); returns how many it replaced.
fn replacing(from: &mut TcpStream, to: &mut TcpStream, pattern: &[u8], with: &[u8]) -> usize {
    let (mut window, mut replaced, mut buf) = (Vec::new(), 0, [0; 4096]);
    while let Ok(n @ 1..) = from.read(&mut buf) {
        window.extend_from_slice(&buf[..n]);
        while let Some(at) = window.windows(pattern.len()).position(|w| w == pattern) {
            window[at..at + pattern.len()].copy_from_slice(with);
            replaced += 1;
        }
        // What could still start a match is held back; the rest goes on
        // at once (the protocol waits for answers).
        let keep = (1..pattern.len()).rev().find(|&k| window.ends_with(&pattern[..k])).unwrap_or(0);
        let ready: Vec<u8> = window.drain(..window.len() - keep).collect();
        if to.write_all(&ready).is_err() {
            return replaced;
        }
    }
    let _ = to.write_all(&window);
    let _ = to.shutdown(std::net::Shutdown::Write);
    replaced
}

/// Passes one answer of the file service on, or, given `evil`, reads the
/// real one and sends `evil` in its place, with its own checksum.
fn pass_or_swap_answer(from: &mut TcpStream, to: &mut TcpStream, evil: Option<&[u8]>) -> std::io::Result<()> {
    let mut kind = [0];
    from.read_exact(&mut kind)?;
    if kind[0] != 0 {
        // A refusal: length and message.
        let mut len = [0; 2];
        from.read_exact(&mut len)?;
        let mut why = vec![0; usize::from(u16::from_le_bytes(len))];
        from.read_exact(&mut why)?;
        return to.write_all(&[&kind[..], &len, &why].concat());
    }
    let mut header = [0; 16];
    from.read_exact(&mut header)?;
    let len = u64::from_le_bytes(header[8..].try_into().unwrap());
    let mut body = vec![0; len as usize + 4];
    from.read_exact(&mut body)?;
    match evil {
        None => to.write_all(&[&kind[..], &header, &body].concat()),
        Some(evil) => {
            let mut answer = vec![0];
            answer.extend_from_slice(&0u64.to_le_bytes());
            answer.extend_from_slice(&(evil.len() as u64).to_le_bytes());
            answer.extend_from_slice(evil);
            answer.extend_from_slice(&crc32fast::hash(evil).to_le_bytes());
            to.write_all(&answer)
        }
    }
}

/// A worker with no app of its own (it fetches the job's) and `flags`.
fn start_fetching_worker(dir: &TestDir, addr: &str, flags: &[&str]) -> Proc {
    let mut cmd = Command::new(worker_bin());
    cmd.arg("--master").arg(addr).args(["--token-file", "token"]).args(flags);
    Proc::spawn("worker", cmd, dir.path())
}

fn swap_app_tamper() -> Tamper {
    let hash = |app: &str| mapreduce::plugin::file_sha256(&plugin(app)).unwrap();
    Tamper::SwapApp {
        genuine_hash: hash("wordcount"),
        evil_hash: hash("indexer"),
        genuine_size: std::fs::metadata(plugin("wordcount")).unwrap().len(),
        evil_plugin: Arc::new(std::fs::read(plugin("indexer")).unwrap()),
    }
}

/// Runs a word count whose worker reaches the coordinator only through a
/// relay that swaps the plugin; returns the job's output and the tally.
fn job_through_app_swapping_relay(name: &str, tls: bool) -> (Vec<u8>, Arc<Tally>, TestDir, Vec<String>) {
    let dir = TestDir::new(name);
    let inputs = write_word_inputs(&dir, 2);
    dir.write("token", SECRET);
    let mut args = vec!["--token-file", "token", "--app", "wordcount", "--reduces", "2"];
    if !tls {
        args.push("--no-tls");
    }
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let (relay, tally) = start_relay(addr, swap_app_tamper());
    let mut worker = start_fetching_worker(&dir, &relay, if tls { &[] } else { &["--no-tls"] });
    master.expect_success();
    worker.expect_success();
    (job_output(dir.path(), 2), tally, dir, inputs)
}

#[test]
fn without_tls_a_relay_swaps_the_plugin_and_the_job_runs_its_app() {
    let (output, tally, dir, inputs) = job_through_app_swapping_relay("mitm-plain", false);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    assert_eq!(tally.plugins_swapped.load(Ordering::SeqCst), 1, "the relay should have swapped the plugin");
    assert!(tally.hashes_swapped.load(Ordering::SeqCst) > 0);
    // The attack works: the outputs are the relay's app's, not the job's.
    assert_same_output(&output, &reference_output(dir.path(), "indexer", &inputs), &dir.listing());
}

#[test]
fn with_tls_the_same_relay_sees_nothing_it_can_change() {
    let (output, tally, dir, inputs) = job_through_app_swapping_relay("mitm-tls", true);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let connections = tally.connections.load(Ordering::SeqCst);
    assert!(connections >= 2, "the worker's connections went through the relay ({connections})");
    assert_eq!(tally.encrypted.load(Ordering::SeqCst), connections, "every connection is encrypted");
    assert_eq!(tally.plugins_swapped.load(Ordering::SeqCst) + tally.hashes_swapped.load(Ordering::SeqCst), 0);
    assert_same_output(&output, &reference_output(dir.path(), "wordcount", &inputs), &dir.listing());
}

#[test]
fn with_tls_a_flipped_byte_breaks_the_connection_and_nothing_of_it_is_used() {
    let dir = TestDir::new("mitm-flip");
    let inputs = write_word_inputs(&dir, 2);
    dir.write("token", SECRET);
    let mut args = vec!["--token-file", "token", "--app", "wordcount", "--reduces", "2"];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    // Past the TLS handshake's first flight on a connection that carries
    // the plugin; within it on the others.
    let (relay, tally) = start_relay(addr, Tamper::FlipByteAt(3000));
    let mut worker = start_fetching_worker(&dir, &relay, &["--reconnect-timeout", "1", "--connect-timeout", "2"]);
    let status = worker.wait(Duration::from_secs(60));
    assert!(!status.success(), "a worker whose every connection is tampered with cannot succeed\n{}", worker.describe());
    let err = worker.stderr();
    assert!(err.contains("decrypt") || err.contains("TLS") || err.contains("corrupt"), "the worker should say its connection broke\n{err}");
    assert!(!err.contains("connected"), "no connection may be taken as working\n{err}");
    assert!(tally.connections.load(Ordering::SeqCst) >= 1);
    // No task ran: nothing of the relay's making reached the job.
    assert!(dir.path().read_dir().unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("mr-out-")));
    master.kill();
}
