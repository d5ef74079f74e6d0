//! The lab's `nocrash` app: `crash` without the crashes, i.e. its reference.

use mapreduce::{App, AppResult, Emitter, MapInput, Values};

/// The nocrash app.
#[derive(Default)]
pub struct NoCrash;

impl App for NoCrash {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        testing_support::crash_map(input, emit)
    }

    fn reduce(&self, _key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        testing_support::sorted_joined(values, out);
        Ok(())
    }
}

mapreduce::export_app!(NoCrash);
