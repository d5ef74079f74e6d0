//! Test fixture for attempts that never end: a word count (`word count`
//! lines, as `apps/wordcount` makes) whose reduce never returns on the key
//! `--param hang_key=WORD`, and whose map never returns once it reaches a
//! line that is exactly `--param hang_line=TEXT` (without its newline).
//! The hang is a loop that neither returns, checks anything, nor counts:
//! no progress for the coordinator to see, and no way for the worker to
//! stop it but to kill its process. (It sleeps in steps rather than spin,
//! to leave the CPU to the rest of a test.) Without the params it is a
//! plain word count, the reference for the output of a job that skipped
//! the hung records.

use std::time::Duration;

use mapreduce::{text, App, AppError, AppResult, Emitter, JobContext, MapInput, Values};

/// The hang app.
pub struct Hang {
    key: Option<Vec<u8>>,
    line: Option<Vec<u8>>,
}

impl Hang {
    /// Reads `hang_key` and `hang_line`.
    pub fn new(job: &JobContext) -> Result<Hang, AppError> {
        let param = |name: &str| job.params.get(name).map(|v| v.as_bytes().to_vec());
        Ok(Hang { key: param("hang_key"), line: param("hang_line") })
    }
}

/// Never returns.
fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl App for Hang {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        for line in input.contents.split_inclusive(|&b| b == b'\n') {
            if self.line.as_deref().is_some_and(|hung| line.strip_suffix(b"\n").unwrap_or(line) == hung) {
                hang();
            }
            text::for_each_word(line, |word| emit.emit(word, b"1"));
        }
        Ok(())
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        if self.key.as_deref() == Some(key) {
            hang();
        }
        out.extend_from_slice(values.count().to_string().as_bytes());
        Ok(())
    }
}

mapreduce::export_app!(Hang, Hang::new);
