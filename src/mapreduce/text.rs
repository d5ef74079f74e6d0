//! Text helpers for apps: splitting bytes into words the way the MIT lab does.
//!
//! A word is a maximal run of Unicode letters: characters of general
//! category L (Lu, Ll, Lt, Lm, Lo), which is what Go's `unicode.IsLetter`
//! tests. This is deliberately *not* `char::is_alphabetic`, which also
//! accepts letter numbers (Ⅻ) and combining marks (Devanagari vowel signs).
//! Input is decoded as UTF-8 the way Go decodes it: each byte that does not
//! belong to a valid sequence is a non-letter, so it ends a word.

use unicode_general_category::{get_general_category, GeneralCategory};

/// True if `c` is in general category L.
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(c),
        GeneralCategory::UppercaseLetter
            | GeneralCategory::LowercaseLetter
            | GeneralCategory::TitlecaseLetter
            | GeneralCategory::ModifierLetter
            | GeneralCategory::OtherLetter
    )
}

/// For each byte: is it an ASCII letter? (Non-ASCII bytes are decoded.)
static ASCII_LETTER: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphabetic();
        b += 1;
    }
    table
};

/// Decodes the character starting at `text[i]` (which is not ASCII): its
/// width and whether it is a letter. An invalid sequence is a one-byte
/// non-letter, as in Go.
#[inline]
fn non_ascii_at(text: &[u8], i: usize) -> (usize, bool) {
    let end = text.len().min(i + 4);
    let valid = match std::str::from_utf8(&text[i..end]) {
        Ok(s) => s,
        // SAFETY-free: `valid_up_to` bytes are valid UTF-8 by definition.
        Err(e) => std::str::from_utf8(&text[i..i + e.valid_up_to()]).expect("valid prefix"),
    };
    match valid.chars().next() {
        Some(c) => (c.len_utf8(), is_letter(c)),
        None => (1, false),
    }
}

/// Calls `f` with every word of `text`, in order.
pub fn for_each_word<'t>(text: &'t [u8], mut f: impl FnMut(&'t str)) {
    let n = text.len();
    let mut i = 0;
    while i < n {
        // Skip to the start of a word.
        let b = text[i];
        if b < 0x80 {
            if !ASCII_LETTER[b as usize] {
                i += 1;
                continue;
            }
        } else {
            let (width, letter) = non_ascii_at(text, i);
            if !letter {
                i += width;
                continue;
            }
        }
        // Extend it to its end.
        let start = i;
        loop {
            if i >= n {
                break;
            }
            let b = text[i];
            if b < 0x80 {
                if !ASCII_LETTER[b as usize] {
                    break;
                }
                i += 1;
            } else {
                let (width, letter) = non_ascii_at(text, i);
                if !letter {
                    break;
                }
                i += width;
            }
        }
        // SAFETY: a word is a run of whole, valid characters (ASCII letters
        // and decoded letters), so it is valid UTF-8.
        f(unsafe { std::str::from_utf8_unchecked(&text[start..i]) });
    }
}

/// The words of `text`, collected (convenient in tests and small apps).
pub fn words(text: &[u8]) -> Vec<&str> {
    let mut all = Vec::new();
    for_each_word(text, |w| all.push(w));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(text: &[u8]) -> Vec<String> {
        words(text).into_iter().map(str::to_string).collect()
    }

    #[test]
    fn ascii_words_split_on_non_letters() {
        assert_eq!(collected(b"Hello, world! it's 42nd"), ["Hello", "world", "it", "s", "nd"]);
        assert_eq!(collected(b""), Vec::<String>::new());
        assert_eq!(collected(b"  ...  "), Vec::<String>::new());
    }

    #[test]
    fn unicode_letters_are_category_l_only() {
        // é and ß are letters (Ll); Ⅻ is a letter number (Nl), not a letter.
        assert_eq!(collected("café straße Ⅻ x".as_bytes()), ["café", "straße", "x"]);
        // Devanagari vowel sign ि (Mc) is alphabetic but not a letter: it splits.
        assert_eq!(collected("किताब".as_bytes()), ["क", "त", "ब"]);
        // Modifier letter ʰ (Lm) and CJK (Lo) are letters.
        assert_eq!(collected("tʰe 東京".as_bytes()), ["tʰe", "東京"]);
    }

    /// The straightforward definition, to check the fast scanner against.
    fn words_by_chunks(text: &[u8]) -> Vec<String> {
        let mut all = Vec::new();
        for chunk in text.utf8_chunks() {
            let mut word = String::new();
            for c in chunk.valid().chars() {
                if is_letter(c) {
                    word.push(c);
                } else if !word.is_empty() {
                    all.push(std::mem::take(&mut word));
                }
            }
            if !word.is_empty() {
                all.push(word);
            }
        }
        all
    }

    #[test]
    fn the_fast_scanner_agrees_with_the_definition_on_mixed_bytes() {
        // Deterministic pseudo-random bytes biased toward letters, multi-byte
        // characters and broken sequences.
        let pieces: [&[u8]; 14] = [
            b"a", b"Z", b" ", b".", b"\n", "é".as_bytes(), "東".as_bytes(), "Ⅻ".as_bytes(), "ि".as_bytes(),
            b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", "𝔘".as_bytes(),
        ];
        let mut state = 12345u64;
        for _ in 0..200 {
            let mut text = Vec::new();
            for _ in 0..200 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                text.extend_from_slice(pieces[(state >> 33) as usize % pieces.len()]);
            }
            assert_eq!(collected(&text), words_by_chunks(&text), "text {:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn invalid_utf8_bytes_end_words() {
        assert_eq!(collected(b"ab\xffcd"), ["ab", "cd"]);
        // A truncated 3-byte sequence followed by a letter.
        assert_eq!(collected(b"x\xe2\x82y"), ["x", "y"]);
        // An encoded surrogate is invalid in both Go and Rust.
        assert_eq!(collected(b"p\xed\xa0\x80q"), ["p", "q"]);
        assert_eq!(collected(b"\xc3"), Vec::<String>::new());
    }
}
