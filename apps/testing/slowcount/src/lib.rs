//! Test fixture: word count (like `apps/wordcount`, with its `words`
//! counter) whose every map call sleeps `--param delay_ms=N` first, so that
//! a test can watch the job's status page while the job runs. With
//! `--param started_file=PATH`, each map call first creates PATH, so that a
//! test knows a map is under way (and has its input open).

use std::path::PathBuf;
use std::time::Duration;

use mapreduce::{counters, App, AppError, AppResult, Emitter, JobContext, MapInput, Values};

/// The slowcount app.
pub struct SlowCount {
    delay: Duration,
    started_file: Option<PathBuf>,
}

impl SlowCount {
    /// Reads `delay_ms` (default 0).
    pub fn new(job: &JobContext) -> Result<SlowCount, AppError> {
        let delay_ms = match job.params.get("delay_ms") {
            Some(text) => text.parse().map_err(|e| format!("delay_ms={text:?}: {e}"))?,
            None => 0,
        };
        Ok(SlowCount { delay: Duration::from_millis(delay_ms), started_file: job.params.get("started_file").map(PathBuf::from) })
    }
}

impl App for SlowCount {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        if let Some(path) = &self.started_file {
            std::fs::write(path, input.filename).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        std::thread::sleep(self.delay);
        let words = emit.count_words(input.contents);
        counters::increment("words", words);
        Ok(())
    }

    fn reduce(&self, _key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        let mut total: u64 = 0;
        while let Some(value) = values.next() {
            total += std::str::from_utf8(value)?.parse::<u64>()?;
        }
        out.extend_from_slice(total.to_string().as_bytes());
        Ok(())
    }
}

mapreduce::export_app!(SlowCount, SlowCount::new);
