//! The lab's `jobcount` app: every map invocation leaves a file in the
//! current directory, and the reduce counts them, so the output shows how
//! many times map ran in total (exactly once per input when nothing fails).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mapreduce::{App, AppResult, Emitter, MapInput, Values};

/// The jobcount app; counts this process's map invocations.
#[derive(Default)]
pub struct JobCount {
    maps_here: AtomicU64,
}

const MARKER_PREFIX: &str = "mr-worker-jobcount";

impl App for JobCount {
    fn map(&self, _input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        let n = self.maps_here.fetch_add(1, Ordering::SeqCst);
        std::fs::write(format!("{MARKER_PREFIX}-{}-{n}", std::process::id()), "x")?;
        std::thread::sleep(Duration::from_millis(2000 + fastrand::u64(0..3000)));
        emit.emit("a", "x");
        Ok(())
    }

    fn reduce(&self, _key: &[u8], _values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        let mut invocations = 0;
        for entry in std::fs::read_dir(".")? {
            if entry?.file_name().to_string_lossy().starts_with(MARKER_PREFIX) {
                invocations += 1;
            }
        }
        out.extend_from_slice(invocations.to_string().as_bytes());
        Ok(())
    }
}

mapreduce::export_app!(JobCount);
