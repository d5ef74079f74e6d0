//! Streaming: MapReduce apps written in any language, as Hadoop Streaming
//! runs them. `--param map=CMD` and `--param reduce=CMD` are shell commands
//! (run with `sh -c`, from the worker's directory):
//!
//! - The map command runs once per map task: the task's input (a whole
//!   file or a split of one, whole lines) is its standard input, and each
//!   line it prints is a pair, `key<TAB>value` (a line without a tab is a
//!   key with an empty value).
//! - The reduce command runs once per reduce task: its standard input is
//!   every pair of the partition as `key<TAB>value` lines, sorted by key
//!   (the values of one key in a row), and what it prints is the task's
//!   output, verbatim.
//!
//! A command that exits with a non-zero status fails the task attempt (the
//! message names the command and the status); its standard error goes to
//! the worker's. No combiner: every pair the map prints is shuffled.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mapreduce::{App, AppError, AppResult, Emitter, JobContext, MapInput, OutputFormat, TaskInfo, TaskKind, Values};

/// The streaming app: two shell commands.
pub struct Streaming {
    map_command: String,
    reduce_command: String,
}

impl Streaming {
    /// Reads the `map` and `reduce` parameters.
    pub fn new(job: &JobContext) -> Result<Streaming, AppError> {
        Ok(Streaming { map_command: job.params.require("map")?.to_string(), reduce_command: job.params.require("reduce")?.to_string() })
    }
}

/// Starts `command` under `sh -c` with piped standard input and output.
fn spawn(command: &str) -> Result<Child, AppError> {
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}").into())
}

/// Waits for `child` and turns a failure into the task's error.
fn wait(mut child: Child, command: &str) -> AppResult {
    let status = child.wait().map_err(|e| format!("waiting for {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited with {status}").into())
    }
}

/// Feeds `input` to a child's standard input on a thread of its own, so
/// that the child's output is read while it is being fed.
fn feed(mut stdin: ChildStdin, input: Vec<u8>) -> JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || stdin.write_all(&input))
}

/// The reduce command of the reduce task running on this thread.
struct Reducer {
    child: Child,
    /// Pairs go here, `key<TAB>value` lines.
    stdin: std::io::BufWriter<ChildStdin>,
    /// What the command has printed and the task has not written yet,
    /// filled by `reader`.
    printed: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<std::io::Result<()>>,
}

impl Reducer {
    fn start(command: &str) -> Result<Reducer, AppError> {
        let mut child = spawn(command)?;
        let stdin = std::io::BufWriter::new(child.stdin.take().expect("piped"));
        let mut stdout = child.stdout.take().expect("piped");
        let printed = Arc::new(Mutex::new(Vec::new()));
        let sink = printed.clone();
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 64 * 1024];
            loop {
                match stdout.read(&mut buffer)? {
                    0 => return Ok(()),
                    n => sink.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&buffer[..n]),
                }
            }
        });
        Ok(Reducer { child, stdin, printed, reader })
    }

    /// Moves what the command has printed so far to `out`.
    fn drain(&self, out: &mut Vec<u8>) {
        out.append(&mut self.printed.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The error for a failed write of pairs: the command's exit status if
    /// it has exited (the likelier story), else the write's error.
    fn write_failed(&mut self, command: &str, error: std::io::Error) -> AppError {
        match self.child.try_wait() {
            Ok(Some(status)) if !status.success() => format!("{command:?} exited with {status}").into(),
            _ => format!("writing to {command:?}: {error}").into(),
        }
    }
}

thread_local! {
    /// Every call of a task attempt runs on the thread that started it.
    static REDUCER: RefCell<Option<Reducer>> = const { RefCell::new(None) };
}

impl App for Streaming {
    fn start_task(&self, task: TaskInfo) -> AppResult {
        // A reducer left by an attempt that failed on this thread goes first.
        if let Some(mut old) = REDUCER.take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        if task.kind == TaskKind::Reduce {
            REDUCER.set(Some(Reducer::start(&self.reduce_command)?));
        }
        Ok(())
    }

    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        let mut child = spawn(&self.map_command)?;
        let feeder = feed(child.stdin.take().expect("piped"), input.contents.to_vec());
        let mut lines = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line)? > 0 {
            let pair = line.strip_suffix(b"\n").unwrap_or(&line);
            match pair.iter().position(|&b| b == b'\t') {
                Some(tab) => emit.emit(&pair[..tab], &pair[tab + 1..]),
                None => emit.emit(pair, b""),
            }
            line.clear();
        }
        // A command that exits without reading all of its input breaks the
        // pipe: not an error in itself, its exit status says how it went.
        let _ = feeder.join();
        wait(child, &self.map_command)
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        REDUCER.with_borrow_mut(|reducer| {
            let reducer = reducer.as_mut().ok_or("reduce called outside a reduce task")?;
            while let Some(value) = values.next() {
                let written = (|| {
                    reducer.stdin.write_all(key)?;
                    reducer.stdin.write_all(b"\t")?;
                    reducer.stdin.write_all(value)?;
                    reducer.stdin.write_all(b"\n")
                })();
                if let Err(e) = written {
                    // Give a command that is exiting the moment to do so.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    return Err(reducer.write_failed(&self.reduce_command, e));
                }
            }
            reducer.drain(out);
            Ok(())
        })
    }

    fn finish_reduce(&self, out: &mut Vec<u8>) -> AppResult {
        let Some(reducer) = REDUCER.take() else { return Err("no reduce command was started".into()) };
        let Reducer { child, stdin, printed, reader } = reducer;
        // Closing its input tells the command the pairs are over. Its exit
        // status explains a failure best, so it is checked first.
        let written = stdin.into_inner().map(drop).map_err(|e| e.into_error());
        let read = reader.join().map_err(|_| "the reader of the reduce command's output panicked")?;
        wait(child, &self.reduce_command)?;
        written.map_err(|e| format!("writing to {:?}: {e}", self.reduce_command))?;
        read.map_err(|e| format!("reading from {:?}: {e}", self.reduce_command))?;
        out.append(&mut printed.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(())
    }

    fn output_format(&self) -> OutputFormat {
        OutputFormat::Raw
    }
}

mapreduce::export_app!(Streaming, Streaming::new);
