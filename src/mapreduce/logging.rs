//! Log setup shared by the binaries: `tracing` to stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset: our own progress at info,
/// tarpc's per-connection chatter (a crashed worker's reset connection is
/// routine here) only when it is an error.
pub const DEFAULT_FILTER: &str = "info,tarpc=error";

/// Installs the subscriber. Binaries then enter a span naming the process
/// (e.g. `worker{id=host:pid}`), which prefixes each line, so interleaved
/// logs of many processes can be told apart.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
