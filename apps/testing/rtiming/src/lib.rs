//! The lab's `rtiming` app: each reduce records how many reduce tasks were
//! running at the same moment, to show reduce tasks run in parallel.

use mapreduce::{App, AppResult, Emitter, MapInput, Values};

/// The rtiming app.
#[derive(Default)]
pub struct RTiming;

impl App for RTiming {
    fn map(&self, _input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        for key in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
            emit.emit(key, "1");
        }
        Ok(())
    }

    fn reduce(&self, _key: &[u8], _values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        let parallel = testing_support::nparallel("reduce")?;
        out.extend_from_slice(parallel.to_string().as_bytes());
        Ok(())
    }
}

mapreduce::export_app!(RTiming);
