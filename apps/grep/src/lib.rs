//! Distributed grep, as in the MapReduce paper: map emits each input line
//! that matches a pattern; reduce copies it to the output.
//!
//! Parameters (`mr-master --param KEY=VALUE`):
//! - `pattern` (required): a regular expression in the syntax of Rust's
//!   `regex` crate, matched against each line's bytes (so lines that are not
//!   UTF-8 can match too); `--param pattern=needle` finds a plain word.
//!
//! Output: `<file>:<line>` for each matching line, like `grep -H`. Within
//! each output file the lines are in input order (file name, then
//! position); the key `<file>:<offset>` (offset zero-padded) gives that
//! order, and the raw output format writes the line without the key.

use mapreduce::{App, AppError, AppResult, Emitter, JobContext, MapInput, OutputFormat, Values};
use regex::bytes::Regex;

/// The grep app.
pub struct Grep {
    pattern: Regex,
}

impl Grep {
    /// Builds the app from the job's `pattern` parameter.
    pub fn new(job: &JobContext) -> Result<Grep, AppError> {
        let text = job.params.require("pattern")?;
        let pattern = Regex::new(text).map_err(|e| format!("pattern {text:?} is not a valid regex: {e}"))?;
        Ok(Grep { pattern })
    }
}

/// Width of the zero-padded offset in keys: enough for any u64.
const OFFSET_DIGITS: usize = 20;

impl App for Grep {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        let mut offset = input.offset;
        let mut key = Vec::new();
        for line in input.contents.split_inclusive(|&b| b == b'\n') {
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            if self.pattern.is_match(text) {
                key.clear();
                key.extend_from_slice(input.filename.as_bytes());
                key.extend_from_slice(format!(":{offset:0width$}", width = OFFSET_DIGITS).as_bytes());
                emit.emit(&key, text);
            }
            offset += line.len() as u64;
        }
        Ok(())
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        // The key is `<file>:<offset>`; the output line is `<file>:<line>`.
        let file = &key[..key.len() - OFFSET_DIGITS - 1];
        while let Some(line) = values.next() {
            out.extend_from_slice(file);
            out.push(b':');
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        Ok(())
    }

    fn output_format(&self) -> OutputFormat {
        OutputFormat::Raw
    }
}

mapreduce::export_app!(Grep, Grep::new);

#[cfg(test)]
mod tests {
    use super::*;
    use mapreduce::{Params, VecValues};

    fn grep(pattern: &str) -> Result<Grep, AppError> {
        Grep::new(&JobContext { params: Params::new([("pattern".to_string(), pattern.to_string())]), ..JobContext::default() })
    }

    #[test]
    fn emits_matching_lines_keyed_by_file_and_offset() {
        let app = grep("ne+dle").unwrap();
        let mut pairs = Vec::new();
        let mut sink = |k: &[u8], v: &[u8]| pairs.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
        let input = MapInput { filename: "f", contents: b"hay\na needle\n\xffneedle\nlast neeedle", offset: 100 };
        app.map(&input, &mut Emitter::new(&mut sink)).unwrap();
        assert_eq!(
            pairs,
            [
                ("f:00000000000000000104".to_string(), b"a needle".to_vec()),
                ("f:00000000000000000113".to_string(), b"\xffneedle".to_vec()),
                ("f:00000000000000000121".to_string(), b"last neeedle".to_vec()),
            ]
        );
        let mut out = Vec::new();
        let mut values = VecValues::new(vec![b"a needle".to_vec()]);
        app.reduce(b"dir/f:00000000000000000104", &mut Values::new(&mut values), &mut out).unwrap();
        assert_eq!(out, b"dir/f:a needle\n");
    }

    #[test]
    fn a_missing_or_bad_pattern_is_refused_by_name() {
        let missing = Grep::new(&JobContext::default()).err().unwrap().to_string();
        assert!(missing.contains("missing job parameter 'pattern'"), "{missing}");
        let bad = grep("(unclosed").err().unwrap().to_string();
        assert!(bad.contains("is not a valid regex"), "{bad}");
    }
}
