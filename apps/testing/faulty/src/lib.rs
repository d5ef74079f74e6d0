//! Test app for failure handling: a word count whose map panics on an input
//! containing `PANIC-IN-MAP`, returns an error on one containing
//! `ERROR-IN-MAP`, aborts the whole worker process (no panic to catch) on
//! one containing `ABORT-IN-MAP`, and whose reduce panics on the key
//! `panicinreduce` and aborts the process on the key `abortinreduce`.

use mapreduce::{text, App, AppResult, Emitter, MapInput, Values};

/// The faulty app.
#[derive(Default)]
pub struct Faulty;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl App for Faulty {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        if contains(input.contents, b"PANIC-IN-MAP") {
            panic!("deliberate panic in map of {}", input.filename);
        }
        if contains(input.contents, b"ABORT-IN-MAP") {
            std::process::abort();
        }
        if contains(input.contents, b"ERROR-IN-MAP") {
            return Err(format!("deliberate error in map of {}", input.filename).into());
        }
        text::for_each_word(input.contents, |word| emit.emit(word, b"1"));
        Ok(())
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        if key == b"panicinreduce" {
            panic!("deliberate panic in reduce");
        }
        if key == b"abortinreduce" {
            std::process::abort();
        }
        out.extend_from_slice(values.count().to_string().as_bytes());
        Ok(())
    }
}

mapreduce::export_app!(Faulty);
