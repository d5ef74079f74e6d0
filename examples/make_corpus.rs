//! Builds benchmark corpora deterministically: the same arguments give
//! byte-identical files.
//!
//! ```text
//! cargo run --release --example make_corpus -- MODE OUTDIR TOTAL_MIB NFILES [--books DIR] [--vocab N]
//! ```
//!
//! Modes:
//! - `books`: text made by concatenating the `*.txt` books of `--books DIR`
//!   (sorted by name) over and over, in a different seeded order per file;
//!   without `--books` (or with no books there), invented prose with a
//!   Zipf-distributed vocabulary of about 20,000 words, like real text.
//! - `zipf`: text whose words follow a Zipf distribution (exponent 1) over
//!   `--vocab N` distinct words (default 4,000,000), so a combiner cannot
//!   hide the shuffle.
//! - `tiny`: NFILES files of one short line each (TOTAL_MIB is ignored).
//!
//! `--script S` writes the letters of `books` and `zipf` text in another
//! script, so that word counts meet text that is not ASCII: `latin` (as
//! is, the default), `accented` (vowels with an acute accent: á é í ó ú ý,
//! two bytes each in UTF-8), `cyrillic` and `greek` (each ASCII letter to
//! one letter of that alphabet, two bytes each), `cjk` (each letter to a
//! CJK ideograph, three bytes), or `mixed` (each word in one of those five,
//! chosen by the word, so a word is spelt the same way everywhere).
//!
//! Every file but `tiny`'s is cut at its last newline at or before its share
//! of TOTAL_MIB, so no word is split and each ends with a newline.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// SplitMix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples ranks 0..n with probability proportional to 1/(rank+1).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|rank| {
                total += 1.0 / (rank + 1) as f64;
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let target = rng.unit() * self.cumulative.last().copied().unwrap_or(0.0);
        self.cumulative.partition_point(|&c| c < target).min(self.cumulative.len() - 1)
    }
}

/// A distinct lowercase word for each index: a bijective base-26 spelling
/// of a scrambled index, at least three letters long.
fn word_for(index: u64) -> String {
    // Scramble so that frequent (low) ranks do not all start alike.
    let mut n = index.wrapping_mul(0x2545_f491_4f6c_dd1d) % 26u64.pow(7) + 26 * 26;
    let mut word = Vec::new();
    while n > 0 {
        n -= 1;
        word.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    String::from_utf8(word).expect("ASCII")
}

/// The alphabet a corpus's letters are written in (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    Latin,
    Accented,
    Cyrillic,
    Greek,
    Cjk,
    Mixed,
}

impl Script {
    fn parse(name: &str) -> Option<Script> {
        Some(match name {
            "latin" => Script::Latin,
            "accented" => Script::Accented,
            "cyrillic" => Script::Cyrillic,
            "greek" => Script::Greek,
            "cjk" => Script::Cjk,
            "mixed" => Script::Mixed,
            _ => return None,
        })
    }

    /// The script of one word under `Mixed`: chosen by the word itself.
    fn for_word(word: &[u8]) -> Script {
        let hash = word.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x100_0000_01b3));
        [Script::Latin, Script::Accented, Script::Cyrillic, Script::Greek, Script::Cjk][(hash % 5) as usize]
    }

    /// The letter `b` (an ASCII letter) in this script.
    fn letter(self, b: u8) -> char {
        let (lower, i) = (b.is_ascii_lowercase(), u32::from(b.to_ascii_lowercase() - b'a'));
        let code = match self {
            Script::Latin | Script::Mixed => return char::from(b),
            Script::Accented => {
                let accented = match b {
                    b'a' => 'á',
                    b'e' => 'é',
                    b'i' => 'í',
                    b'o' => 'ó',
                    b'u' => 'ú',
                    b'y' => 'ý',
                    b'A' => 'Á',
                    b'E' => 'É',
                    b'I' => 'Í',
                    b'O' => 'Ó',
                    b'U' => 'Ú',
                    b'Y' => 'Ý',
                    _ => char::from(b),
                };
                return accented;
            }
            Script::Cyrillic if lower => 0x430 + i,
            Script::Cyrillic => 0x410 + i,
            Script::Greek if lower => 0x3b1 + i,
            // U+03A2 is unassigned: capitals skip it.
            Script::Greek => 0x391 + i + u32::from(i >= 17),
            Script::Cjk if lower => 0x4e00 + i,
            Script::Cjk => 0x4e80 + i,
        };
        char::from_u32(code).expect("a letter")
    }
}

/// Appends `ascii` with its letters written in `script`.
fn transliterate(script: Script, ascii: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < ascii.len() {
        let end = ascii[i..].iter().position(|b| !b.is_ascii_alphabetic()).map_or(ascii.len(), |n| i + n);
        if end == i {
            out.push(ascii[i]);
            i += 1;
            continue;
        }
        let word = &ascii[i..end];
        let script = if script == Script::Mixed { Script::for_word(word) } else { script };
        let mut buffer = [0u8; 4];
        for &b in word {
            out.extend_from_slice(script.letter(b).encode_utf8(&mut buffer).as_bytes());
        }
        i = end;
    }
}

/// Writes `target` bytes (cut at a newline) of `next_chunk`'s output, its
/// letters in `script`.
fn write_file(path: &Path, target: u64, script: Script, mut next_chunk: impl FnMut(&mut Vec<u8>)) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    let mut written = 0u64;
    let (mut ascii, mut chunk) = (Vec::new(), Vec::new());
    while written < target {
        chunk.clear();
        if script == Script::Latin {
            next_chunk(&mut chunk);
        } else {
            ascii.clear();
            next_chunk(&mut ascii);
            transliterate(script, &ascii, &mut chunk);
        }
        let room = (target - written) as usize;
        if chunk.len() >= room {
            // Cut at the last newline that fits.
            let cut = chunk[..room].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            out.write_all(&chunk[..cut])?;
            break;
        }
        out.write_all(&chunk)?;
        written += chunk.len() as u64;
    }
    out.flush()
}

/// Prose from a vocabulary, one line of 6 to 14 words per chunk.
fn prose_line(rng: &mut Rng, zipf: &Zipf, word: &dyn Fn(usize) -> String, chunk: &mut Vec<u8>) {
    let words = 6 + rng.below(9);
    for i in 0..words {
        if i > 0 {
            chunk.push(b' ');
        }
        chunk.extend_from_slice(word(zipf.sample(rng)).as_bytes());
        if rng.below(8) == 0 {
            chunk.push([b',', b'.', b';', b'!'][rng.below(4) as usize]);
        }
    }
    chunk.push(b'\n');
}

fn books(dir: Option<&Path>) -> io::Result<Vec<Vec<u8>>> {
    let Some(dir) = dir else { return Ok(Vec::new()) };
    let mut paths: Vec<PathBuf> =
        fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "txt")).collect();
    paths.sort();
    paths.iter().map(fs::read).collect()
}

fn run(args: &[String]) -> Result<(), String> {
    let usage =
        "usage: make_corpus books|zipf|tiny OUTDIR TOTAL_MIB NFILES [--books DIR] [--vocab N] [--script latin|accented|cyrillic|greek|cjk|mixed]";
    if args.len() < 4 {
        return Err(usage.to_string());
    }
    let (mode, outdir) = (args[0].as_str(), PathBuf::from(&args[1]));
    let total_mib: u64 = args[2].parse().map_err(|_| format!("TOTAL_MIB '{}' is not a number", args[2]))?;
    let files: u64 = args[3].parse().ok().filter(|&n| n > 0).ok_or(format!("NFILES '{}' is not a positive number", args[3]))?;
    let mut books_dir = None;
    let mut vocab = 4_000_000usize;
    let mut script = Script::Latin;
    let mut rest = args[4..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--books" => books_dir = Some(PathBuf::from(value)),
            "--vocab" => vocab = value.parse().map_err(|_| format!("--vocab '{value}' is not a number"))?,
            "--script" => {
                script = Script::parse(value).ok_or(format!("--script '{value}' is not one of latin, accented, cyrillic, greek, cjk, mixed"))?
            }
            _ => return Err(format!("unknown flag {flag}\n{usage}")),
        }
    }
    fs::create_dir_all(&outdir).map_err(|e| format!("{}: {e}", outdir.display()))?;
    let per_file = total_mib * (1 << 20) / files;
    let name = |i: u64| outdir.join(format!("part-{i:05}.txt"));
    let io_err = |e: io::Error| e.to_string();
    match mode {
        "books" => {
            let books = books(books_dir.as_deref()).map_err(io_err)?;
            if books.is_empty() {
                // Invented prose: a 20,000-word syllable vocabulary.
                let syllables = ["ka", "to", "ri", "mel", "an", "dor", "e", "is", "lu", "ven", "sa", "th", "or", "qui", "b", "ne"];
                let spell = move |rank: usize| -> String {
                    let mut n = rank as u64 + 1;
                    let mut w = String::new();
                    while n > 0 {
                        w.push_str(syllables[(n % 16) as usize]);
                        n /= 16;
                    }
                    w
                };
                let zipf = Zipf::new(20_000);
                for i in 0..files {
                    let mut rng = Rng(0x5eed ^ i);
                    write_file(&name(i), per_file, script, |chunk| prose_line(&mut rng, &zipf, &spell, chunk)).map_err(io_err)?;
                }
            } else {
                for i in 0..files {
                    let mut rng = Rng(0xb00c ^ i);
                    let mut order: Vec<usize> = Vec::new();
                    write_file(&name(i), per_file, script, |chunk| {
                        if order.is_empty() {
                            // A new seeded shuffle of the books for every pass.
                            order = (0..books.len()).collect();
                            for j in (1..order.len()).rev() {
                                order.swap(j, rng.below(j as u64 + 1) as usize);
                            }
                        }
                        chunk.extend_from_slice(&books[order.pop().expect("non-empty")]);
                        if !chunk.ends_with(b"\n") {
                            chunk.push(b'\n');
                        }
                    })
                    .map_err(io_err)?;
                }
            }
        }
        "zipf" => {
            let zipf = Zipf::new(vocab);
            let spell = |rank: usize| word_for(rank as u64);
            for i in 0..files {
                let mut rng = Rng(0x21bf ^ i);
                write_file(&name(i), per_file, script, |chunk| {
                    for _ in 0..64 {
                        prose_line(&mut rng, &zipf, &spell, chunk);
                    }
                })
                .map_err(io_err)?;
            }
        }
        "tiny" => {
            for i in 0..files {
                fs::write(name(i), format!("tiny file {i} says hello\n")).map_err(io_err)?;
            }
        }
        _ => return Err(format!("unknown mode '{mode}'\n{usage}")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make_corpus: {e}");
            ExitCode::FAILURE
        }
    }
}
