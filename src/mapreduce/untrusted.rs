//! What a peer sends, made safe to log: text cut by characters (never by
//! bytes, which can split a character and panic) and escaped (no control
//! characters or newlines of an attacker's choosing in our log), and
//! warnings about refused messages limited to a line per window, with a
//! count of those not logged.
//!
//! Everything that arrives over the network is hostile, token or not: a
//! refused report's text is shown only through [`excerpt`], and only after
//! the report was checked, under a [`WarningLimit`].

use std::time::{Duration, Instant};

/// The most characters of a peer's text a log line shows.
pub const EXCERPT_CHARS: usize = 120;

/// `text` as a log line may show it: at most `max_chars` characters, with
/// characters that could forge or hide a line's content escaped as
/// `\u{..}`, and `...` when cut.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let mut shown = String::new();
    for c in text.chars().take(max_chars) {
        if is_invisible(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    if text.chars().nth(max_chars).is_some() {
        shown.push_str("...");
    }
    shown
}

/// Whether `c` could forge or hide what a log line says: control
/// characters (newlines, terminal escapes), format characters (bidi
/// overrides that reorder a line) and line or paragraph separators.
fn is_invisible(c: char) -> bool {
    use unicode_general_category::{get_general_category, GeneralCategory};
    c.is_control()
        || matches!(get_general_category(c), GeneralCategory::Format | GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator)
}

/// Lets one warning through per `window`, counting the rest, so that a
/// peer sending refused messages as fast as it can costs one log line per
/// window.
#[derive(Debug)]
pub struct WarningLimit {
    window: Duration,
    last_logged: Option<Instant>,
    /// Warnings not logged since the last one that was.
    held_back: u64,
    /// Every warning ever offered.
    total: u64,
}

impl WarningLimit {
    /// At most one warning per `window`.
    pub fn new(window: Duration) -> WarningLimit {
        WarningLimit { window, last_logged: None, held_back: 0, total: 0 }
    }

    /// Offers one warning at `now`: `Some(n)` if it may be logged, `n`
    /// being how many were held back since the last one logged; `None` if
    /// it is held back.
    pub fn offer(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        let due = self.last_logged.is_none_or(|last| now.saturating_duration_since(last) >= self.window);
        if !due {
            self.held_back += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }

    /// Every warning offered so far, logged or not.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_by_characters_and_escape_what_would_forge_log_lines() {
        assert_eq!(excerpt("plain", 10), "plain");
        // A multibyte character across the cut: bytes would split it.
        let text = "abcdefghijk\u{00e9}\u{00e9}\u{00e9}";
        assert_eq!(excerpt(text, 12), "abcdefghijk\u{00e9}...");
        assert_eq!(excerpt("line\nforged: ok\u{1b}[31m", 40), "line\\u{a}forged: ok\\u{1b}[31m");
        assert_eq!(excerpt("a\u{202e}b\u{2028}c", 10), "a\\u{202e}b\\u{2028}c", "bidi overrides and separators");
        assert_eq!(excerpt("", 3), "");
        assert_eq!(excerpt("\"exit 3\" isn't", 20), "\"exit 3\" isn't", "quotes are kept");
        assert_eq!(excerpt("abc", 0), "...");
    }

    #[test]
    fn one_warning_per_window_with_a_count_of_those_held_back() {
        let start = Instant::now();
        let mut limit = WarningLimit::new(Duration::from_secs(10));
        assert_eq!(limit.offer(start), Some(0));
        for i in 1..=1000 {
            assert_eq!(limit.offer(start + Duration::from_millis(i)), None);
        }
        assert_eq!(limit.offer(start + Duration::from_secs(10)), Some(1000));
        assert_eq!(limit.offer(start + Duration::from_secs(11)), None);
        assert_eq!(limit.total(), 1003);
    }
}
