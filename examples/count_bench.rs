//! Times the word count map's hot path alone (scan words, count them with
//! `Emitter::count`, emit the counts) over the given files, one map call per
//! file as a map task makes it: for tuning the scanner and the count table.
//!
//! usage: cargo run --release --example count_bench -- FILE...
//! (SCAN_ONLY=1: only find the words; PER_WORD=1: count through
//! `for_each_word` and `Emitter::count` instead of `count_words`.)

use std::time::Instant;

use mapreduce::{text, Emitter};

fn main() {
    let files: Vec<Vec<u8>> = std::env::args().skip(1).map(|p| std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).collect();
    let bytes: usize = files.iter().map(Vec::len).sum();
    let started = Instant::now();
    let (mut words, mut pairs) = (0u64, 0u64);
    for contents in &files {
        let mut sink = |_: &[u8], _: &[u8]| pairs += 1;
        let mut emit = Emitter::new(&mut sink);
        if std::env::var_os("SCAN_ONLY").is_some() {
            text::for_each_word(contents, |_| words += 1);
        } else if std::env::var_os("PER_WORD").is_some() {
            text::for_each_word(contents, |word| {
                words += 1;
                emit.count(word, 1)
            });
        } else {
            words += emit.count_words(contents);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} files, {:.0} MiB, {words} words, {pairs} pairs: {:.3} s, {:.0} MiB/s, {:.2} ns/word",
        files.len(),
        bytes as f64 / (1 << 20) as f64,
        secs,
        bytes as f64 / (1 << 20) as f64 / secs,
        secs * 1e9 / words as f64
    );
}
