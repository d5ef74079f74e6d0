//! Helpers the binaries share for parsing flags and handling signals.

use std::time::Duration;

/// Parses a flag value in seconds (fractions allowed) that must be positive,
/// for clap's `value_parser`.
pub fn parse_positive_secs(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 => Duration::try_from_secs_f64(secs).map_err(|e| format!("'{text}': {e}")),
        _ => Err(format!("'{text}' is not a positive number of seconds")),
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM, so that a stopped process still
/// cleans up. If a handler cannot be installed, that signal keeps its
/// default action rather than stopping the program.
pub async fn termination_signal() {
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let sigint = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        () = sigterm => {}
        () = sigint => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_positive_numbers() {
        assert_eq!(parse_positive_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_positive_secs("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "soon", "NaN", "inf", "1e300"] {
            assert!(parse_positive_secs(bad).is_err(), "{bad}");
        }
    }
}
