//! Log setup shared by the binaries: `tracing` to stderr, filtered by
//! `RUST_LOG`, and optionally also to a file (`--log-file`).
//!
//! Binaries enter a span naming the process (`master`, or
//! `worker{id=host:pid}`), and a worker runs each task inside a
//! `task{task=... attempt=...}` span, so every line says which process and
//! which task it is about, and interleaved logs of many processes can be
//! told apart. While the master's progress bars are on screen, stderr lines
//! are printed through them ([`route_through`]) so the two never tear.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use indicatif::MultiProgress;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The filter used when `RUST_LOG` is unset: our own progress at info,
/// tarpc's per-connection chatter (a crashed worker's reset connection is
/// routine here) only when it is an error.
pub const DEFAULT_FILTER: &str = "info,tarpc=error";

/// Progress bars that stderr log lines must be printed through, if any.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Installs the subscriber: stderr (colours only on a terminal), plus
/// `log_file` (appended to, created if missing, no colours) if given.
pub fn init(log_file: Option<&Path>) -> io::Result<()> {
    init_with(log_file, None)
}

/// [`init`], with one more layer that sees every line first (the standing
/// cluster's per-job logs).
pub fn init_with(log_file: Option<&Path>, extra: Option<Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>>) -> io::Result<()> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(StderrThroughBars)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter());
    let file = match log_file {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(SharedFile(Arc::new(Mutex::new(file))))
                    .with_ansi(false)
                    .with_target(false)
                    .with_filter(filter()),
            )
        }
        None => None,
    };
    let _ = tracing_subscriber::registry().with(extra).with(stderr).with(file).try_init();
    Ok(())
}

/// While the returned guard lives, stderr log lines are printed above
/// `bars` instead of through them.
pub fn route_through(bars: MultiProgress) -> BarsGuard {
    *BARS.lock().unwrap_or_else(|p| p.into_inner()) = Some(bars);
    BarsGuard(())
}

/// Stops routing log lines through progress bars when dropped.
pub struct BarsGuard(());

impl Drop for BarsGuard {
    fn drop(&mut self) {
        *BARS.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Writes each formatted line to stderr, suspending the progress bars
/// around it if they are up.
struct StderrThroughBars;

impl<'a> MakeWriter<'a> for StderrThroughBars {
    type Writer = StderrThroughBars;

    fn make_writer(&'a self) -> Self::Writer {
        StderrThroughBars
    }
}

impl Write for StderrThroughBars {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bars = BARS.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bars {
            Some(bars) => bars.suspend(|| io::stderr().write_all(buf))?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A log file shared by every thread; each line is one `write` call under
/// the lock, and the file is opened for appending, so processes sharing a
/// file do not interleave within a line.
#[derive(Clone)]
struct SharedFile(Arc<Mutex<File>>);

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = SharedFile;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}
