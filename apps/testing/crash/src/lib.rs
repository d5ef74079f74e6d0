//! The lab's `crash` app: like `nocrash`, but map and reduce randomly exit
//! the worker or stall it for up to 10 s. The job must still produce exactly
//! `nocrash`'s output.

use mapreduce::{App, AppResult, Emitter, MapInput, Values};

/// The crash app.
#[derive(Default)]
pub struct Crash;

impl App for Crash {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        testing_support::maybe_crash();
        testing_support::crash_map(input, emit)
    }

    fn reduce(&self, _key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        testing_support::maybe_crash();
        testing_support::sorted_joined(values, out);
        Ok(())
    }
}

mapreduce::export_app!(Crash);
