//! `mr-master`'s live progress: bars on a terminal (indicatif), plain log
//! lines anywhere else.
//!
//! Both read the job's [`StatusReport`] on a timer; neither touches the
//! data path. Bars are drawn on stderr only when stdout and stderr are both
//! terminals and `--quiet` was not given; otherwise a line like
//! `progress: map phase, maps 3/16 (2 running), reduces 0/10, 96.0 MiB of
//! 1.0 GiB at 120 MiB/s, 2 workers, ETA 7 s` is logged every few seconds.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Interval;

use crate::coordinator::StatusHandle;
use crate::status::{Phase, StatusReport};

/// How often the bars are redrawn.
const BAR_REFRESH: Duration = Duration::from_millis(200);

/// How often a progress line is logged when there are no bars.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars redrawn in place on stderr.
    Bars,
    /// A log line every few seconds.
    LogLines,
}

impl ProgressMode {
    /// Bars only if stdout and stderr are terminals and not `quiet`.
    pub fn choose(quiet: bool) -> ProgressMode {
        if !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::LogLines
        }
    }
}

/// Shows the job's progress until `ended` completes (then clears the bars).
pub async fn show(status: StatusHandle, mode: ProgressMode, ended: impl Future<Output = ()>) {
    match mode {
        ProgressMode::Bars => show_bars(status, ended).await,
        ProgressMode::LogLines => log_lines(status, ended).await,
    }
}

async fn log_lines(status: StatusHandle, ended: impl Future<Output = ()>) {
    tokio::pin!(ended);
    let mut ticks = tokio::time::interval(LOG_INTERVAL);
    ticks.tick().await; // the first tick is immediate; the job has barely started
    while let Some(report) = next_report(&mut ticks, ended.as_mut(), &status).await {
        tracing::info!("progress: {}", describe(&report));
    }
}

/// Waits for the next tick and returns the job's status then, or `None`
/// once the job has ended.
async fn next_report(ticks: &mut Interval, ended: Pin<&mut impl Future<Output = ()>>, status: &StatusHandle) -> Option<StatusReport> {
    tokio::select! {
        () = ended => return None,
        _ = ticks.tick() => {}
    }
    let report = status.report();
    (report.job.phase != Phase::Done).then_some(report)
}

/// One line of progress, as logged.
pub fn describe(report: &StatusReport) -> String {
    let p = &report.progress;
    let phase = match report.job.phase {
        Phase::Map => "map phase",
        Phase::Reduce => "reduce phase",
        Phase::Done => "done",
    };
    let alive = report.workers.iter().filter(|w| w.alive).count();
    let eta = p.eta_secs.map_or_else(|| "unknown".to_string(), |s| format!("{s:.0} s"));
    format!(
        "{phase}, maps {}/{} ({} running), reduces {}/{} ({} running), {} of {} at {}/s, {alive} worker{} alive, elapsed {:.1} s, ETA {eta}",
        p.maps.done,
        p.maps.total,
        p.maps.running,
        p.reduces.done,
        p.reduces.total,
        p.reduces.running,
        human_bytes(p.input_bytes_done as f64),
        human_bytes(report.job.input_bytes as f64),
        human_bytes(p.input_bytes_per_sec),
        if alive == 1 { "" } else { "s" },
        report.job.elapsed_secs,
    )
}

async fn show_bars(status: StatusHandle, ended: impl Future<Output = ()>) {
    tokio::pin!(ended);
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    // Log lines printed while the bars are up must not tear them.
    let _logs = crate::logging::route_through(multi.clone());
    let header = multi.add(ProgressBar::new_spinner().with_style(style("{spinner} {msg}")));
    // The bar takes whatever width the counts and the message leave.
    let bar = |label: &str| style(&format!("{label:<6} {{pos:>5}}/{{len:<5}} [{{wide_bar:.cyan/blue}}] {{msg}}"));
    let maps = multi.add(ProgressBar::new(0).with_style(bar("map")));
    let reduces = multi.add(ProgressBar::new(0).with_style(bar("reduce")));
    let mut ticks = tokio::time::interval(BAR_REFRESH);
    while let Some(report) = next_report(&mut ticks, ended.as_mut(), &status).await {
        let p = &report.progress;
        let alive = report.workers.iter().filter(|w| w.alive).count();
        let phase = if report.job.phase == Phase::Map { "map phase" } else { "reduce phase" };
        let eta = p.eta_secs.map_or_else(|| "–".to_string(), |s| format!("{s:.0} s"));
        header.set_message(format!(
            "{phase} · {alive} worker{} alive · elapsed {:.1} s · ETA {eta}",
            if alive == 1 { "" } else { "s" },
            report.job.elapsed_secs
        ));
        header.tick();
        maps.set_length(p.maps.total as u64);
        maps.set_position(p.maps.done as u64);
        maps.set_message(format!(
            "{} running · {} of {} · {}/s",
            p.maps.running,
            human_bytes(p.input_bytes_done as f64),
            human_bytes(report.job.input_bytes as f64),
            human_bytes(p.input_bytes_per_sec)
        ));
        reduces.set_length(p.reduces.total as u64);
        reduces.set_position(p.reduces.done as u64);
        reduces.set_message(format!("{} running", p.reduces.running));
    }
    for bar in [&header, &maps, &reduces] {
        bar.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("the templates are fixed and valid").progress_chars("=> ")
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_a_person_would_write_them() {
        assert_eq!(human_bytes(0.0), "0 B");
        assert_eq!(human_bytes(1023.0), "1023 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(1024.0 * 1024.0 * 1024.0), "1.0 GiB");
    }
}
