//! Formatting an error and its causes as the one line a user sees.

use std::error::Error;

/// `err` and its chain of sources joined with ": ", skipping a source whose
/// text the line already holds (our error messages often include their
/// source, and printing it twice helps nobody).
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("input x: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("dlopen failed")]
    struct Hides {
        source: std::io::Error,
    }

    #[test]
    fn sources_appear_once() {
        let repeats = Repeats { source: std::io::Error::other("gone") };
        assert_eq!(one_line(&repeats), "input x: gone");
        let hides = Hides { source: std::io::Error::other("bad ELF") };
        assert_eq!(one_line(&hides), "dlopen failed: bad ELF");
    }
}
