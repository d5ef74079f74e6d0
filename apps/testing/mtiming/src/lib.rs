//! The lab's `mtiming` app: each map records when it ran and how many map
//! tasks were running at the same moment, to show map tasks run in parallel.

use std::time::{SystemTime, UNIX_EPOCH};

use mapreduce::{App, AppResult, Emitter, MapInput, Values};

/// The mtiming app.
#[derive(Default)]
pub struct MTiming;

impl App for MTiming {
    fn map(&self, _input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        let pid = std::process::id();
        let parallel = testing_support::nparallel("map")?;
        emit.emit(format!("times-{pid}"), format!("{started:.1}"));
        emit.emit(format!("parallel-{pid}"), parallel.to_string());
        Ok(())
    }

    fn reduce(&self, _key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        testing_support::sorted_joined(values, out);
        Ok(())
    }
}

mapreduce::export_app!(MTiming);
