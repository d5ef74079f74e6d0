//! Helpers the binaries share for parsing flags and handling signals.

use std::time::Duration;

use crate::backup::BackupPolicy;

/// Parses a flag value in seconds (fractions allowed) that must be positive,
/// for clap's `value_parser`.
pub fn parse_positive_secs(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 => Duration::try_from_secs_f64(secs).map_err(|e| format!("'{text}': {e}")),
        _ => Err(format!("'{text}' is not a positive number of seconds")),
    }
}

/// Parses a flag value in seconds (fractions allowed, 0 too), for clap.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs >= 0.0 => Duration::try_from_secs_f64(secs).map_err(|e| format!("'{text}': {e}")),
        _ => Err(format!("'{text}' is not a number of seconds")),
    }
}

/// Parses a byte size for clap: a whole number with an optional binary
/// suffix `K`, `M`, `G` or `T` (also `KiB`, `MiB`, ...): `64M` is 64 MiB.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("'{text}' is not a size (a number with an optional K, M, G or T suffix)")),
    };
    let number: u64 = digits.parse().map_err(|_| format!("'{text}' is not a size (a number with an optional K, M, G or T suffix)"))?;
    number.checked_mul(1u64 << shift).ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses `--backup-tasks` for clap: `off`, or how many times the median
/// finished task an attempt must run to get a backup (a number, at least 1).
pub fn parse_backup_policy(text: &str) -> Result<Option<BackupPolicy>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(slowness) if (1.0..=1e6).contains(&slowness) => Ok(Some(BackupPolicy { slowness })),
        _ => Err(format!("'{text}' is neither 'off' nor a slowness factor from 1 up (e.g. 3)")),
    }
}

/// Parses a `KEY=VALUE` job parameter for clap.
pub fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
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

/// The secret of `--token-file` (if given), encrypting connections unless
/// `--no-tls`; `Err` says what is wrong, in one line.
pub fn read_secret(token_file: Option<&std::path::Path>, no_tls: bool) -> Result<Option<crate::handshake::Secret>, String> {
    match token_file {
        None if no_tls => Err("--no-tls needs --token-file: connections without a secret are plain already (and allowed on loopback only)".into()),
        None => Ok(None),
        Some(path) => {
            let secret = crate::handshake::Secret::from_file(path).map_err(|e| e.to_string())?;
            Ok(Some(if no_tls { secret.without_tls() } else { secret }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert_eq!(parse_bytes("1K"), Ok(1024));
        for bad in ["", "M", "-1", "1.5M", "12X", "99999999999T"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn params_are_key_equals_value() {
        assert_eq!(parse_param("pattern=a=b"), Ok(("pattern".to_string(), "a=b".to_string())));
        assert_eq!(parse_param("empty="), Ok(("empty".to_string(), String::new())));
        assert!(parse_param("=x").is_err());
        assert!(parse_param("novalue").is_err());
    }

    #[test]
    fn backup_tasks_take_a_factor_or_off() {
        assert_eq!(parse_backup_policy("3"), Ok(Some(BackupPolicy { slowness: 3.0 })));
        assert_eq!(parse_backup_policy("1.5"), Ok(Some(BackupPolicy { slowness: 1.5 })));
        assert_eq!(parse_backup_policy("OFF"), Ok(None));
        for bad in ["0.5", "-2", "NaN", "inf", "never", ""] {
            assert!(parse_backup_policy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_must_be_positive_numbers() {
        assert_eq!(parse_positive_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_positive_secs("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "soon", "NaN", "inf", "1e300"] {
            assert!(parse_positive_secs(bad).is_err(), "{bad}");
        }
    }
}
