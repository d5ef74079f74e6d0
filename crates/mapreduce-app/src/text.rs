//! Text helpers for apps: splitting bytes into words the way the MIT lab does.
//!
//! A word is a maximal run of Unicode letters: characters of general
//! category L (Lu, Ll, Lt, Lm, Lo), which is what Go's `unicode.IsLetter`
//! tests. This is deliberately *not* `char::is_alphabetic`, which also
//! accepts letter numbers (Ⅻ) and combining marks (Devanagari vowel signs).
//! Input is decoded as UTF-8 the way Go decodes it: each byte that does not
//! belong to a valid sequence is a non-letter, so it ends a word.

use std::sync::LazyLock;

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

/// Code points below this are looked up in [`LETTER_BITS`]: the Basic
/// Multilingual Plane and the two after it (historic scripts, CJK
/// extensions), 24 KiB of bits.
const TABLE_END: u32 = 0x30000;

/// Bit `c` says whether code point `c` is a letter, for `c < TABLE_END`:
/// one load instead of a search of the category ranges. Built on first use
/// (a few milliseconds).
static LETTER_BITS: LazyLock<Box<[u64]>> = LazyLock::new(|| {
    let mut bits = vec![0u64; (TABLE_END / 64) as usize];
    for (cp, c) in (0..TABLE_END).filter_map(|cp| Some((cp, char::from_u32(cp)?))) {
        if is_letter(c) {
            bits[(cp / 64) as usize] |= 1 << (cp % 64);
        }
    }
    bits.into_boxed_slice()
});

/// Whether code point `cp` (a valid scalar value) is a letter.
#[inline(always)]
fn is_letter_code_point(table: &[u64], cp: u32) -> bool {
    match table.get((cp / 64) as usize) {
        Some(word) => word >> (cp % 64) & 1 != 0,
        None => char::from_u32(cp).is_some_and(is_letter),
    }
}

/// Decodes the UTF-8 sequence starting at `text[i]` (not ASCII) into its
/// code point and width, or `None` if it is ill-formed (Unicode's table
/// of well-formed sequences: no overlong forms, surrogates, or values past
/// U+10FFFF), which Go decodes as a one-byte non-letter.
#[inline(always)]
fn decode_at(text: &[u8], i: usize) -> Option<(u32, usize)> {
    let lead = text[i];
    let cont = |k: usize| text.get(i + k).map(|&b| u32::from(b)).filter(|b| b & 0xC0 == 0x80).map(|b| b & 0x3F);
    match lead {
        0xC2..=0xDF => Some((u32::from(lead & 0x1F) << 6 | cont(1)?, 2)),
        0xE0..=0xEF => {
            let b1 = cont(1)?;
            // E0 needs A0..BF (no overlong form); ED needs 80..9F (no surrogate).
            if (lead == 0xE0 && b1 < 0x20) || (lead == 0xED && b1 >= 0x20) {
                return None;
            }
            Some((u32::from(lead & 0x0F) << 12 | b1 << 6 | cont(2)?, 3))
        }
        0xF0..=0xF4 => {
            let b1 = cont(1)?;
            // F0 needs 90..BF (no overlong form); F4 needs 80..8F (up to U+10FFFF).
            if (lead == 0xF0 && b1 < 0x10) || (lead == 0xF4 && b1 >= 0x10) {
                return None;
            }
            Some((u32::from(lead & 0x07) << 18 | b1 << 12 | cont(2)? << 6 | cont(3)?, 4))
        }
        _ => None,
    }
}

/// The character starting at `text[i]` (which is not ASCII): its width and
/// whether it is a letter. An ill-formed sequence is a one-byte non-letter,
/// as in Go.
#[inline(always)]
fn non_ascii_at(table: &[u64], text: &[u8], i: usize) -> (usize, bool) {
    match decode_at(text, i) {
        Some((cp, width)) => (width, is_letter_code_point(table, cp)),
        None => (1, false),
    }
}

/// Calls `f` with every word of `text`, in order.
///
/// Text is scanned 64 bytes at a time: each block becomes a bit mask of
/// the bytes that belong to letters, and words are found from the mask's
/// edges, a few instructions per word instead of a branch per byte. A block
/// of pure ASCII (nearly all of English prose) gets its mask from a few
/// vector compares; a block with other bytes also decodes the character at
/// each UTF-8 lead byte and looks it up in a bit table of letters, marking
/// all of a letter's bytes. The tail is decoded character by character.
/// All paths share one state (where the current word began), so a word may
/// span blocks of any kind.
pub fn for_each_word<'t>(text: &'t [u8], f: impl FnMut(&'t str)) {
    /// Hands each word to a closure as a `&str`.
    struct ToClosure<'t, F> {
        text: &'t [u8],
        f: F,
    }
    impl<'t, F: FnMut(&'t str)> WordSink for ToClosure<'t, F> {
        #[inline(always)]
        fn word(&mut self, start: usize, end: usize) {
            // SAFETY: a word is a run of whole, valid characters (ASCII
            // letters and decoded letters), so it is valid UTF-8.
            (self.f)(unsafe { std::str::from_utf8_unchecked(&self.text[start..end]) })
        }
    }
    scan_words(text, &mut ToClosure { text, f });
}

/// Receives the words the scanner finds, as byte ranges of the text. The
/// framework's own fast paths implement it with `#[inline(always)]`, so
/// that the per-word work is compiled into the scanning loop (a closure
/// is not reliably inlined there, and the call costs ~10%).
pub(crate) trait WordSink {
    /// The word `text[start..end]`.
    fn word(&mut self, start: usize, end: usize);
}

/// [`for_each_word`] for a [`WordSink`].
#[inline(always)]
pub(crate) fn scan_words(text: &[u8], sink: &mut impl WordSink) {
    let mut scan = WordScan { text, start: None, table: &LETTER_BITS };
    let mut i = 0;
    while i + BLOCK <= text.len() {
        let (letters, non_ascii) = block_masks(&text[i..i + BLOCK]);
        i = if non_ascii == 0 { scan.ascii_block(i, letters, sink) } else { scan.mixed_block(i, letters, non_ascii, sink) };
    }
    scan.decode(i, text.len(), sink);
    if let Some(start) = scan.start {
        sink.word(start, text.len());
    }
}

/// Bytes per mask: one bit per byte in a `u64`.
const BLOCK: usize = 64;

/// The scanner's state between blocks.
struct WordScan<'t> {
    text: &'t [u8],
    /// Where the word being read began, if the scan is inside one.
    start: Option<usize>,
    /// [`LETTER_BITS`].
    table: &'static [u64],
}

impl WordScan<'_> {
    /// Finds the words in the all-ASCII block at `base` whose letters are
    /// the set bits of `letters`; returns the next position.
    #[inline(always)]
    fn ascii_block(&mut self, base: usize, letters: u64, sink: &mut impl WordSink) -> usize {
        // Bit p of `before` says whether byte p-1 is a letter (for p = 0:
        // whether a word is open from the previous block).
        let before = (letters << 1) | u64::from(self.start.is_some());
        let mut starts = letters & !before;
        let mut ends = !letters & before;
        if let Some(start) = self.start {
            if ends == 0 {
                // The open word goes on through this block.
                return base + BLOCK;
            }
            sink.word(start, base + ends.trailing_zeros() as usize);
            ends &= ends - 1;
            self.start = None;
        }
        // The k-th start pairs with the k-th end; a start without an end
        // opens a word that ends in a later block.
        while starts != 0 {
            let start = base + starts.trailing_zeros() as usize;
            starts &= starts - 1;
            if ends == 0 {
                self.start = Some(start);
                break;
            }
            sink.word(start, base + ends.trailing_zeros() as usize);
            ends &= ends - 1;
        }
        base + BLOCK
    }

    /// Finds the words in the block at `base`, which has non-ASCII bytes
    /// (the set bits of `non_ascii`) beside the ASCII letters of `letters`;
    /// returns the next position: the block's end, or past it when the
    /// block's last character straddles the end.
    #[inline(always)]
    fn mixed_block(&mut self, base: usize, mut letters: u64, non_ascii: u64, sink: &mut impl WordSink) -> usize {
        let mut leads = non_ascii & lead_mask(&self.text[base..base + BLOCK]);
        let mut next = base + BLOCK;
        // Every other non-ASCII byte (a letter's continuation bytes, those
        // of other characters, stray or ill-formed bytes) is a non-letter
        // unless a letter's lead marks it.
        while leads != 0 {
            let p = leads.trailing_zeros() as usize;
            leads &= leads - 1;
            let Some((cp, width)) = decode_at(self.text, base + p) else { continue };
            if is_letter_code_point(self.table, cp) {
                // Bits past the block fall off; `next` skips those bytes.
                letters |= ((1u64 << width) - 1) << p;
            }
            next = next.max(base + p + width);
        }
        self.ascii_block(base, letters, sink);
        next
    }

    /// Decodes the characters that start in `from..to` one by one; returns
    /// where the next character starts (`to`, or up to 3 bytes past it when
    /// the last character straddles `to`).
    fn decode(&mut self, from: usize, to: usize, sink: &mut impl WordSink) -> usize {
        let mut i = from;
        while i < to {
            let b = self.text[i];
            let (width, letter) = if b < 0x80 { (1, ASCII_LETTER[b as usize]) } else { non_ascii_at(self.table, self.text, i) };
            match (letter, self.start) {
                (true, None) => self.start = Some(i),
                (false, Some(start)) => {
                    sink.word(start, i);
                    self.start = None;
                }
                _ => {}
            }
            i += width;
        }
        i
    }
}

/// For a 64-byte block: a mask of its ASCII letters and a mask of its
/// non-ASCII bytes (bit p for byte p).
#[inline]
fn block_masks(block: &[u8]) -> (u64, u64) {
    debug_assert_eq!(block.len(), BLOCK);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `block_masks_sse2` needs `block.len() >= BLOCK`. The
        // only caller, `scan_words`, passes `&text[i..i + BLOCK]`, a
        // bounds-checked slice of exactly BLOCK bytes (the debug assertion above checks it in tests).
        unsafe { block_masks_sse2(block) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let (mut letters, mut non_ascii) = (0u64, 0u64);
        for (p, &b) in block.iter().enumerate() {
            letters |= u64::from(ASCII_LETTER[b as usize]) << p;
            non_ascii |= u64::from(b >> 7) << p;
        }
        (letters, non_ascii)
    }
}

/// [`block_masks`] with SSE2: four unaligned 16-byte loads.
///
/// # Safety
/// `block` must hold at least [`BLOCK`] (64) bytes: the loads read
/// `block[0..64]` without bounds checks.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn block_masks_sse2(block: &[u8]) -> (u64, u64) {
    use std::arch::x86_64::*;
    let (mut letters, mut non_ascii) = (0u64, 0u64);
    // SAFETY: the intrinsics need SSE2, which is part of the x86_64
    // baseline, so every x86_64 CPU has it. `_mm_loadu_si128` reads 16
    // bytes at `block + 16 * part` with no alignment requirement; for
    // `part` in 0..4 that is within `block[0..64]`, which the caller
    // guarantees is readable (see `# Safety`), and `add` stays inside it.
    unsafe {
        // A byte is an ASCII letter iff (b | 0x20) - 'a', as an unsigned byte,
        // is at most 25 (bytes >= 0x80 land above that); SSE2 has no unsigned
        // compare, but min(y, 25) == y is one.
        let case = _mm_set1_epi8(0x20);
        let a = _mm_set1_epi8(b'a' as i8);
        let z = _mm_set1_epi8(25);
        for part in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * part) as *const __m128i);
            let y = _mm_sub_epi8(_mm_or_si128(v, case), a);
            let is_letter = _mm_cmpeq_epi8(_mm_min_epu8(y, z), y);
            letters |= u64::from(_mm_movemask_epi8(is_letter) as u16) << (16 * part);
            non_ascii |= u64::from(_mm_movemask_epi8(v) as u16) << (16 * part);
        }
    }
    (letters, non_ascii)
}

/// For a 64-byte block: a mask of its bytes from 0xC0 up, the lead bytes
/// of UTF-8 sequences of two bytes or more (valid or not).
#[inline]
fn lead_mask(block: &[u8]) -> u64 {
    debug_assert_eq!(block.len(), BLOCK);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let mut leads = 0u64;
        // SAFETY: SSE2 is part of the x86_64 baseline, so the intrinsics
        // are available. The loads are unaligned (`loadu`) and read
        // `block[16 * part..16 * part + 16]` for `part` in 0..4, within the
        // 64 bytes: the only caller, `mixed_block`, passes
        // `&self.text[base..base + BLOCK]`, a
        // bounds-checked slice of exactly BLOCK bytes.
        unsafe {
            // As signed bytes, 0xC0..=0xFF are -64..=-1: above -65 and
            // negative.
            let floor = _mm_set1_epi8(-65);
            for part in 0..4 {
                let v = _mm_loadu_si128(block.as_ptr().add(16 * part) as *const __m128i);
                let lead = _mm_and_si128(_mm_cmpgt_epi8(v, floor), v);
                leads |= u64::from(_mm_movemask_epi8(lead) as u16) << (16 * part);
            }
        }
        leads
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        block.iter().enumerate().fold(0u64, |mask, (p, &b)| mask | u64::from(b >= 0xC0) << p)
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
            b"a",
            b"Z",
            b" ",
            b".",
            b"\n",
            "é".as_bytes(),
            "東".as_bytes(),
            "Ⅻ".as_bytes(),
            "ि".as_bytes(),
            b"\xff",
            b"\xc3",
            b"\xe2\x82",
            b"\xed\xa0\x80",
            "𝔘".as_bytes(),
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
    fn the_block_scanner_agrees_with_the_definition_across_block_edges() {
        // Mostly ASCII, so that most 64-byte blocks take the mask path, with
        // a rare multi-byte or broken character forcing a decoded block;
        // every length from 0 to 300 puts word edges on every offset.
        let pieces: [&[u8]; 10] = [b"word", b"a", b"longerwordthatspans", b" ", b", ", b"\n", b"x", "é".as_bytes(), b"\xe2\x82", "東".as_bytes()];
        let mut state = 99u64;
        for len in 0..300 {
            let mut text = Vec::new();
            while text.len() < len {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let pick = (state >> 33) as usize % 100;
                // 3% non-ASCII pieces.
                let piece = if pick < 97 { pieces[pick % 7] } else { pieces[7 + pick % 3] };
                text.extend_from_slice(piece);
            }
            text.truncate(len);
            assert_eq!(collected(&text), words_by_chunks(&text), "text {:?}", String::from_utf8_lossy(&text));
        }
        // A word running through several ASCII blocks, then into a decoded one.
        let mut long = vec![b'q'; 200];
        long.extend_from_slice("é".as_bytes());
        long.extend_from_slice(b"q ok");
        assert_eq!(collected(&long), [format!("{}éq", "q".repeat(200)), "ok".to_string()]);
        // Every byte value as a one-byte text and inside an ASCII block.
        for b in 0..=255u8 {
            let mut text = vec![b'a'; 70];
            text[10] = b;
            assert_eq!(collected(&text), words_by_chunks(&text), "byte {b:#x}");
        }
    }

    #[test]
    fn characters_of_every_width_at_every_offset_around_a_block_edge() {
        let pieces: [&[u8]; 9] = [
            "é".as_bytes(),
            "東".as_bytes(),
            "𝔘".as_bytes(),
            "Ⅻ".as_bytes(),
            "😀".as_bytes(),
            b"\xed\xa0\x80",
            b"\xe2\x82",
            b"\xf4\x90\x80\x80",
            b"\xc3\xc3\xa9",
        ];
        for piece in pieces {
            for before in 50..70 {
                for filler in [b'a', b' ', 0xa9] {
                    let mut text = vec![filler; before];
                    text.extend_from_slice(piece);
                    text.extend_from_slice(b"bc d");
                    text.extend_from_slice(piece);
                    text.resize(140, b'z');
                    assert_eq!(collected(&text), words_by_chunks(&text), "text {:?}", String::from_utf8_lossy(&text));
                }
            }
        }
    }

    #[test]
    fn the_letter_table_agrees_with_the_categories() {
        for cp in 0..TABLE_END + 0x1000 {
            if let Some(c) = char::from_u32(cp) {
                assert_eq!(is_letter_code_point(&LETTER_BITS, cp), is_letter(c), "U+{cp:04X}");
            }
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
