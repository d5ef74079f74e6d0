//! Test fixture: word count (like `apps/wordcount`, with its `words`
//! counter) whose every map call sleeps `--param delay_ms=N` first, so that
//! a test can watch the job's status page while the job runs. With
//! `--param started_file=PATH`, each map call first creates PATH, so that a
//! test knows a map is under way (and has its input open). With
//! `--param tick_ms=N`, the delay is slept in steps of N ms, each followed by
//! an increment of the counter `ticks`: progress the coordinator can see.
//! With `--param reduce_delay_ms=N`, every reduce call sleeps N ms first
//! (in ticks too), so that a test can act while reduces run. With
//! `--param reduce_gate_file=PATH`, every reduce call waits until PATH
//! exists (counting `ticks` every 50 ms meanwhile, so the wait shows
//! progress), so that a test holds the job in its reduce phase until it
//! says. With `--param output=tab`, output lines are `word<TAB>count`.

use std::path::PathBuf;
use std::time::Duration;

use mapreduce::{counters, App, AppError, AppResult, Emitter, JobContext, MapInput, OutputFormat, Values};

/// The slowcount app.
pub struct SlowCount {
    delay: Duration,
    reduce_delay: Duration,
    reduce_gate: Option<PathBuf>,
    started_file: Option<PathBuf>,
    /// Sleep in steps this long, counting each (`None`: in one go).
    tick: Option<Duration>,
    output: OutputFormat,
}

fn millis(job: &JobContext, name: &str) -> Result<Option<Duration>, AppError> {
    match job.params.get(name) {
        Some(text) => Ok(Some(Duration::from_millis(text.parse().map_err(|e| format!("{name}={text:?}: {e}"))?))),
        None => Ok(None),
    }
}

impl SlowCount {
    /// Reads `delay_ms` and `reduce_delay_ms` (default 0), `started_file` and `tick_ms`.
    pub fn new(job: &JobContext) -> Result<SlowCount, AppError> {
        Ok(SlowCount {
            delay: millis(job, "delay_ms")?.unwrap_or_default(),
            reduce_delay: millis(job, "reduce_delay_ms")?.unwrap_or_default(),
            reduce_gate: job.params.get("reduce_gate_file").map(PathBuf::from),
            started_file: job.params.get("started_file").map(PathBuf::from),
            tick: millis(job, "tick_ms")?.filter(|t| !t.is_zero()),
            output: match job.params.get("output") {
                None => OutputFormat::KeyValue,
                Some("tab") => OutputFormat::KeyTabValue,
                Some(other) => return Err(format!("output={other:?}: only 'tab' is known").into()),
            },
        })
    }

    fn sleep(&self, delay: Duration) {
        let Some(tick) = self.tick else { return std::thread::sleep(delay) };
        let mut left = delay;
        while !left.is_zero() {
            let step = tick.min(left);
            std::thread::sleep(step);
            left -= step;
            counters::increment("ticks", 1);
        }
    }
}

impl App for SlowCount {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        if let Some(path) = &self.started_file {
            std::fs::write(path, input.filename).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        self.sleep(self.delay);
        let words = emit.count_words(input.contents);
        counters::increment("words", words);
        Ok(())
    }

    fn output_format(&self) -> OutputFormat {
        self.output
    }

    fn reduce(&self, _key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        if let Some(gate) = &self.reduce_gate {
            while !gate.exists() {
                std::thread::sleep(Duration::from_millis(50));
                counters::increment("ticks", 1);
            }
        }
        self.sleep(self.reduce_delay);
        let mut total: u64 = 0;
        while let Some(value) = values.next() {
            total += std::str::from_utf8(value)?.parse::<u64>()?;
        }
        out.extend_from_slice(total.to_string().as_bytes());
        Ok(())
    }
}

mapreduce::export_app!(SlowCount, SlowCount::new);
