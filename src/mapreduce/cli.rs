//! Helpers the binaries share for parsing flags and handling signals.

use std::path::PathBuf;
use std::time::Duration;

use crate::backup::BackupPolicy;
use crate::output::OutputCompression;
use crate::runfile::Compression;
use crate::scheduler::SchedulerConfig;

/// `--backup-tasks`: `None` for off. An alias, so that clap takes the flag
/// as one required-with-default value rather than as an optional one.
type Backups = Option<BackupPolicy>;

/// What one job is: its app, inputs, output directory and every setting
/// that may differ from job to job. `mr-master` takes these flags for its
/// one job; they are defined once here so that every command that starts
/// a job takes the same flags, with the same defaults and checks. A
/// cluster's client sends them as they are, and [`JobFlags::check`] runs on
/// both ends: what the flag parser refuses, a peer could still send.
///
/// Sent as JSON (the cluster's HTTP API), a field left out takes its
/// flag's default, as an unsaid flag does, and an unknown field is an
/// error (a misspelt one must not quietly become a default).
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobFlags {
    /// Number of reduce tasks, and so of output files. 0 makes a map-only
    /// job, as in Hadoop: no shuffle, no reduce; each map task's output is
    /// an output file of its own (`mr-out-M` for map task M), its pairs in
    /// the order the map emitted them.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=MAX_REDUCES as i64))]
    pub reduces: u32,

    /// The job's app: a path to a plugin (`.so`), or a bare NAME for
    /// `libNAME.so` beside this executable. Workers started without APP
    /// fetch it from the master (checked by its SHA-256); a worker started
    /// with another build of an app is refused.
    #[arg(long, value_name = "NAME|PATH")]
    pub app: Option<String>,

    /// Seconds a worker may be silent, or a task make no progress, before
    /// the task is given to another worker.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_positive_secs)]
    pub task_timeout: Duration,

    /// Attempts of one task that may end without success (an app error or
    /// panic, no progress for the task timeout, its worker crashed or went
    /// silent) before the job stops with an error naming the task, its
    /// input and how each attempt ended. `--max-task-failures` is an alias.
    #[arg(long, alias = "max-task-failures", value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_task_attempts: u32,

    /// Backup attempts of stragglers (Google MapReduce's backup tasks,
    /// Hadoop's speculative execution): once no task of a phase waits and
    /// half of them are done, an idle worker also runs any task that has
    /// run FACTOR times as long as the phase's median finished task (and at
    /// least 1 s longer); the first attempt to finish wins. `off` disables.
    #[arg(long, value_name = "FACTOR|off", default_value = "3", value_parser = parse_backup_policy)]
    pub backup_tasks: Backups,

    /// Bad records each task may skip (Google MapReduce's skipping of bad
    /// records; 0, the default, skips none): a line or key group that two
    /// attempts died on (a crash, a panic or error, a hang) is skipped by
    /// the task's later attempts, counted (`skipped_records`) and listed in
    /// the summary. Maps read line by line once they have failed twice.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub skip_bad_records: u32,

    /// A parameter for the app, `KEY=VALUE` (repeatable): every worker's app
    /// sees the same parameters.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,

    /// Target input bytes per map task: larger files are split at line
    /// boundaries into several map tasks (suffixes K, M, G); 0 makes one map
    /// task per file, as in the MIT lab.
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_bytes)]
    pub split_size: u64,

    /// Memory for buffering one map task's output before it is sorted and
    /// spilled to disk, in bytes (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_bytes)]
    pub map_buffer: u64,

    /// Compression of intermediate files: `none` or `lz4`. Off by default:
    /// with the shuffle on one machine's page cache it did not pay for itself
    /// (see docs/performance.md).
    #[arg(long, value_name = "CODEC", default_value = "none")]
    pub compress: Compression,

    /// Compression of the output files: `none`, `gz` (gzip) or `zst`
    /// (Zstandard). Compressed outputs are named `mr-out-R.gz` or
    /// `mr-out-R.zst`, and a later job reads them back by that extension.
    #[arg(long, value_name = "CODEC", default_value = "none", value_parser = OutputCompression::parse)]
    pub output_compression: OutputCompression,

    /// Files to ship with the job, as Hadoop Streaming's `-files`
    /// (comma-separated or repeated): every worker fetches them from the
    /// master into a directory of the job's, where Streaming runs its
    /// commands; an app finds it in the environment variable
    /// `MR_JOB_FILES`. At most 256 files and 1 GiB in all.
    #[arg(long, value_name = "FILE[,FILE]", value_delimiter = ',')]
    pub files: Vec<PathBuf>,

    /// Do not use the app's combiner even if it has one (the output is the
    /// same; more data goes through the shuffle).
    #[arg(long)]
    pub no_combine: bool,

    /// Directory for the output files (created if missing). The job's
    /// intermediate files and journal live in its subdirectory `.mr-job/`
    /// while the job runs; the outputs appear all together when every
    /// reduce is done.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub output_dir: PathBuf,

    /// Input files, directories (walked recursively) or quoted glob
    /// patterns (`'logs/*.txt'`, `**` crosses directories; one that matches
    /// nothing is an error); names starting with `.` or `_` found in a walk
    /// or by a pattern are skipped.
    /// At least one is needed (`mr submit` may take its inputs from other
    /// jobs instead, with `--input-job`).
    #[arg(value_name = "FILE")]
    pub inputs: Vec<PathBuf>,
}

/// Every flag at its default, no app and no input: what an empty command
/// line gives.
impl Default for JobFlags {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            job: JobFlags,
        }
        // Cannot fail: no flag is required, and every default parses.
        <Defaults as clap::Parser>::try_parse_from(["job"]).map(|defaults| defaults.job).expect("the flags' defaults parse")
    }
}

impl JobFlags {
    /// Whether the settings are in range and go together; `Err` says why
    /// not, in one line. The ranges are the flag parser's, checked again
    /// for settings that came over the network.
    pub fn check(&self) -> Result<(), String> {
        if self.inputs.is_empty() {
            return Err("no input files given".into());
        }
        self.check_settings()
    }

    /// [`JobFlags::check`] but for the inputs, which a cluster's job may
    /// take from other jobs instead (`mr submit --input-job`).
    pub fn check_settings(&self) -> Result<(), String> {
        if self.reduces > MAX_REDUCES {
            return Err(format!("--reduces {} is out of range: from 0 (map-only) to {MAX_REDUCES}", self.reduces));
        }
        if self.max_task_attempts == 0 {
            return Err("--max-task-attempts is at least 1".into());
        }
        if self.task_timeout.is_zero() || self.task_timeout > MAX_TASK_TIMEOUT {
            return Err(format!("--task-timeout must be positive and at most {} days", MAX_TASK_TIMEOUT.as_secs() / 86_400));
        }
        if let Some(policy) = self.backup_tasks {
            if !(1.0..=1e6).contains(&policy.slowness) {
                return Err(format!("--backup-tasks {} is neither 'off' nor a slowness factor from 1 up", policy.slowness));
            }
        }
        if let Some((key, _)) = self.params.iter().find(|(key, _)| key.is_empty()) {
            return Err(format!("a --param has an empty key ({key:?}=...)"));
        }
        if self.skip_bad_records > 0 && self.max_task_attempts < 4 {
            // Two attempts on a map's whole split, then two on the bad line.
            return Err(
                "--skip-bad-records needs --max-task-attempts of at least 4 (a map's bad line is found by its third attempt and skipped from its fifth)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The job's timeouts and failure limits.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            task_timeout: self.task_timeout,
            max_task_attempts: self.max_task_attempts,
            backups: self.backup_tasks,
            skip_bad_records: self.skip_bad_records,
        }
    }
}

/// The longest task timeout: a week (time computed from it must not
/// overflow).
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// The most reduce tasks a job may have: each is an output file, and the
/// scheduler keeps a table entry for each.
pub const MAX_REDUCES: u32 = 100_000;

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
