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

/// Calls `f` with every word of `text`, in order.
pub fn for_each_word<'t>(text: &'t [u8], mut f: impl FnMut(&'t str)) {
    // Invalid bytes are never letters, so no word spans two valid chunks.
    for chunk in text.utf8_chunks() {
        let valid = chunk.valid();
        let mut start = None;
        for (i, c) in valid.char_indices() {
            match (is_letter(c), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    f(&valid[s..i]);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            f(&valid[s..]);
        }
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
