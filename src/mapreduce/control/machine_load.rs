//! The load a long-lived worker reports to its cluster with each heartbeat
//! ([`crate::cluster::workers::Load`]): the machine's one-minute load
//! average (`/proc/loadavg`), the memory available to new processes
//! (`MemAvailable` in `/proc/meminfo`) and the free space of the file
//! system of the work directory (`statvfs`), where map outputs go. The
//! cluster holds back a worker over its limits ([`crate::agent`] sends
//! this; [`crate::cluster::workers`] judges it).
//!
//! A reading that fails (no `/proc`, a file system that will not say) is
//! not sent at all, rather than sent as a guess: a made-up zero would let
//! a full machine take tasks, a made-up infinity would hold a fine one back.

use std::path::Path;

use crate::cluster::workers::Load;

/// The machine's load now, for a worker whose work directory is in
/// `work_dir`; `None` if any part cannot be read.
pub fn read(work_dir: &Path) -> Option<Load> {
    let load_average = parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)?;
    let free_memory_bytes = parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    let free_disk_bytes = free_disk_bytes(work_dir).ok()?;
    Some(Load { load_average, free_memory_bytes, free_disk_bytes })
}

/// The one-minute load average: the first field of `/proc/loadavg`
/// (`0.52 0.58 0.59 1/467 12345`), if it is a finite number at least 0.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    let load: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (load.is_finite() && load >= 0.0).then_some(load)
}

/// `MemAvailable` of `/proc/meminfo` (`MemAvailable:  8123456 kB`), in
/// bytes. Kernels before 3.14 have none: `None` there.
pub fn parse_mem_available(text: &str) -> Option<u64> {
    crate::memory_budget::meminfo_field(text, "MemAvailable")
}

/// Bytes free to unprivileged users on the file system of `path`.
pub fn free_disk_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: all-zero bytes are a valid `statvfs` (a plain C struct of
    // integers), which the call overwrites.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct to fill, both alive and
    // exclusively ours for the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field widths differ between platforms; on Linux both are u64.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_average_is_the_first_field() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(parse_loadavg("12 1 1 1/1 1"), Some(12.0));
        for bad in ["", "\n", "x 1 1", "-1 0 0", "NaN 0 0", "inf 0 0"] {
            assert_eq!(parse_loadavg(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn available_memory_in_bytes() {
        let meminfo = "MemTotal:       16318412 kB\nMemFree:         1234567 kB\nMemAvailable:    8000000 kB\nBuffers: 1 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(8_000_000 * 1024));
        assert_eq!(parse_mem_available("MemAvailable: 10\n"), Some(10));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\nMemFree: 1 kB\n"), None, "a kernel without MemAvailable");
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: 1 MB\n"), None, "an unknown unit is not guessed");
        assert_eq!(parse_mem_available(&format!("MemAvailable: {} kB\n", u64::MAX)), None, "overflow");
    }

    #[test]
    fn free_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_disk_bytes(dir.path()).unwrap() > 0);
        assert!(free_disk_bytes(&dir.path().join("missing")).is_err());
    }
}
