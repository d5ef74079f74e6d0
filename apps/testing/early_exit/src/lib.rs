//! The lab's `early_exit` app: reduces of some keys take 3 s, so a worker
//! or coordinator that exits before every output is final gets caught.

use std::time::Duration;

use mapreduce::{App, AppResult, Emitter, MapInput, Values};

/// The early_exit app.
#[derive(Default)]
pub struct EarlyExit;

impl App for EarlyExit {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        emit.emit(input.filename, "1");
        Ok(())
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        let key = String::from_utf8_lossy(key);
        if key.contains("sherlock") || key.contains("tom") {
            std::thread::sleep(Duration::from_secs(3));
        }
        out.extend_from_slice(values.count().to_string().as_bytes());
        Ok(())
    }
}

mapreduce::export_app!(EarlyExit);
