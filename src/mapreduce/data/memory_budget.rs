//! A worker's memory budget (`mr-worker --memory`), how it is divided among
//! the worker's slots, and the resident memory a worker measures of itself
//! and of its task processes, for the summary and `/metrics`.
//!
//! A worker is its own process (RPC, file server) plus one task process per
//! slot. The budget is what all of them together may hold resident. Less
//! what the processes hold before any task ([`WORKER_BASE_BYTES`], and
//! [`TASK_PROCESS_BASE_BYTES`] per slot), it is shared equally among the
//! slots; each slot's share ([`SlotMemory`]) bounds what its tasks buffer:
//!
//! | what | of a slot's share |
//! |---|---|
//! | a map's split held whole (larger ones, and any line, are read in pieces of a quarter of that, a line up to the whole quarter) | 1/4 |
//! | a map's output buffer, and the radix sort's scratch beside it | 1/4, and up to as much again |
//! | a reduce's runs fetched into memory (the rest go to disk) | 1/4 |
//! | a merge's readers, about 144 KiB each (a block, and a compressed one) | 1/8 |
//!
//! and the rest is the app's own, of which a map's count table
//! ([`crate::app::Emitter::count`], about 100 bytes a key) is told to hold
//! at most a quarter of the share before it emits its counts. A map and a reduce never run at once in a
//! slot, and a reduce frees what maps kept for reuse before it starts.
//!
//! What is measured is the peak: each process's `VmHWM` (its resident
//! high-water mark), summed over the worker and the task processes its
//! slots have had. A task process's mark is read at every heartbeat and at
//! the end of every attempt, and kept; the kernel forgets it once the
//! process exits, so one that dies mid-attempt counts as of its last
//! reading, or as the largest child the worker has reaped
//! (`getrusage(RUSAGE_CHILDREN)`), whichever is more. Since the processes'
//! peaks need not come at once, the sum is at least the true peak of the
//! whole but for that one gap. It covers the worker's life: a long-lived
//! worker of a cluster reports the peak of every job it has served.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::runfile::BLOCK_BYTES;

/// What the worker process holds resident with no task running: its
/// runtime's threads, its file server and connections (9 MiB measured in a
/// release build; a debug build's code is about three times the size).
pub const WORKER_BASE_BYTES: u64 = if cfg!(debug_assertions) { 32 << 20 } else { 16 << 20 };

/// What a task process holds resident before its first task: its code,
/// the app's, and its runtime (7 MiB measured with the word count, release).
pub const TASK_PROCESS_BASE_BYTES: u64 = if cfg!(debug_assertions) { 40 << 20 } else { 12 << 20 };

/// The smallest share of a slot: below it a map's buffer would spill every
/// few thousand records.
pub const MIN_SLOT_BYTES: u64 = 8 << 20;

/// The fewest runs one merge may read at once under a tight budget (more
/// runs are merged in passes, [`crate::fan_in`]).
const MIN_FAN_IN: usize = 8;

/// One slot's share of its worker's budget, as its tasks use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMemory {
    /// The slot's whole share, in bytes.
    pub share_bytes: u64,
    /// The largest split a map reads whole; a larger one (or a compressed
    /// input larger than this) is read in pieces of a quarter of it.
    pub input_bytes: u64,
    /// The most a map buffers (the job's `--map-buffer` if smaller).
    pub map_buffer_bytes: u64,
    /// The most of its runs a reduce fetches into memory (the worker's
    /// `--fetch-memory` if smaller).
    pub fetch_bytes: u64,
    /// The most runs one merge reads at once.
    pub fan_in: usize,
}

impl SlotMemory {
    /// A slot's use of `share` bytes: see the module docs.
    pub fn of_share(share: u64) -> SlotMemory {
        // A run reader holds a block, and a compressed run's packed block.
        let per_reader = 2 * BLOCK_BYTES as u64 + 16 * 1024;
        let fan_in = usize::try_from(share / 8 / per_reader).unwrap_or(usize::MAX).clamp(MIN_FAN_IN, crate::fan_in::MERGE_FAN_IN);
        SlotMemory { share_bytes: share, input_bytes: share / 4, map_buffer_bytes: share / 4, fetch_bytes: share / 4, fan_in }
    }

    /// The piece a split too large to hold whole is read in: pieces are
    /// read a little past a line end, and the next read lands beside the
    /// last, so the input holds about three pieces at once.
    pub fn input_piece_bytes(&self) -> usize {
        usize::try_from(self.input_bytes / 4).unwrap_or(usize::MAX).max(1)
    }

    /// The longest line a map reads in pieces: the input's quarter of the
    /// share; `None` without a budget (the reader's own limit holds).
    pub fn longest_line_bytes(&self) -> Option<usize> {
        self.is_bounded().then(|| usize::try_from(self.input_bytes).unwrap_or(usize::MAX))
    }

    /// The keys a map's count table ([`crate::app::Emitter::count`]) may
    /// hold, at about 100 bytes a key, in a quarter of the share (part of
    /// the app's rest); `None` without a budget.
    pub fn counted_keys(&self) -> Option<u64> {
        self.is_bounded().then_some(self.share_bytes / 4 / 100)
    }

    /// Whether a budget bounds the slot.
    pub fn is_bounded(&self) -> bool {
        self.share_bytes != u64::MAX
    }

    /// No bound worth the name: every buffer as the job and flags ask.
    pub fn unbounded() -> SlotMemory {
        let all = u64::MAX;
        SlotMemory { share_bytes: all, input_bytes: all, map_buffer_bytes: all, fetch_bytes: all, fan_in: crate::fan_in::MERGE_FAN_IN }
    }
}

/// A budget too small for the slots asked of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is too small for {slots} slot{}: the worker needs {} of its own and {} per slot (give --memory {} or more, or fewer --slots)",
    if *defaulted { format!("the default --memory ({}, half this machine's memory)", mib_down(*budget)) } else { format!("--memory {}", mib_down(*budget)) },
    if *slots == 1 { "" } else { "s" },
    mib_up(WORKER_BASE_BYTES),
    mib_up(TASK_PROCESS_BASE_BYTES + MIN_SLOT_BYTES),
    mib_up(minimum_budget(*slots))
)]
pub struct BudgetTooSmall {
    /// The budget, in bytes.
    pub budget: u64,
    /// Whether it is the default rather than given.
    pub defaulted: bool,
    /// The slots asked for.
    pub slots: usize,
}

/// The most slots `budget` bytes allow (0 for a budget below one slot's).
pub fn slots_within(budget: u64) -> usize {
    let per_slot = TASK_PROCESS_BASE_BYTES + MIN_SLOT_BYTES;
    usize::try_from(budget.saturating_sub(WORKER_BASE_BYTES) / per_slot).unwrap_or(usize::MAX)
}

/// The smallest budget for `slots` slots.
pub const fn minimum_budget(slots: usize) -> u64 {
    WORKER_BASE_BYTES + (slots as u64).saturating_mul(TASK_PROCESS_BASE_BYTES + MIN_SLOT_BYTES)
}

/// Each of `slots` slots' share of a worker's `budget` bytes.
pub fn divide(budget: u64, slots: usize) -> Result<SlotMemory, BudgetTooSmall> {
    let slots_u64 = slots.max(1) as u64;
    if budget < minimum_budget(slots.max(1)) {
        return Err(BudgetTooSmall { budget, defaulted: false, slots });
    }
    let for_tasks = budget - WORKER_BASE_BYTES - slots_u64 * TASK_PROCESS_BASE_BYTES;
    Ok(SlotMemory::of_share(for_tasks / slots_u64))
}

/// The default budget: half the memory this machine gives its processes
/// (physical memory, or the control group's limit where that is lower, as
/// in a container), leaving the rest to the page cache the shuffle reads
/// from and to the machine's other work. `None` where it cannot be read.
pub fn default_budget() -> Option<u64> {
    machine_memory().map(|bytes| bytes / 2)
}

/// The memory this machine gives its processes: `MemTotal`, or the
/// control group's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`)
/// where that is lower.
pub fn machine_memory() -> Option<u64> {
    let total = meminfo_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal")?;
    let limit = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|text| text.trim().parse::<u64>().ok());
    Some(limit.map_or(total, |limit| limit.min(total)))
}

/// A `NAME:  1234 kB` field of `/proc/meminfo` or `/proc/PID/status`, in
/// bytes.
pub fn meminfo_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
    let mut fields = line.split_ascii_whitespace();
    let amount: u64 = fields.next()?.parse().ok()?;
    let unit = match fields.next() {
        None => 1,
        Some("kB") => 1024,
        Some(_) => return None,
    };
    amount.checked_mul(unit)
}

/// The resident high-water mark (`VmHWM`) of process `pid`, or of this one
/// for `None`.
pub fn peak_rss(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    meminfo_field(&std::fs::read_to_string(path).ok()?, "VmHWM")
}

/// What a worker says of its memory with each heartbeat and report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMemory {
    /// Its peak resident memory so far, itself and its task processes
    /// (see the module docs); `None` where it cannot be read.
    pub peak_rss_bytes: Option<u64>,
    /// Its budget (`--memory`); `None` for none.
    pub budget_bytes: Option<u64>,
}

impl WorkerMemory {
    /// What is known once a worker that said `self` says `newer`: its
    /// newer budget, and the higher peak (a late message never lowers it).
    pub fn then(self, newer: WorkerMemory) -> WorkerMemory {
        WorkerMemory { peak_rss_bytes: self.peak_rss_bytes.max(newer.peak_rss_bytes), budget_bytes: newer.budget_bytes }
    }
}

/// The peak resident memory of one slot's task processes, past and
/// present: the slot's thread notes each one's high-water mark before it
/// ends, and the heartbeat reads the running one's.
#[derive(Debug, Default)]
pub struct TaskProcessPeak {
    /// The running task process, 0 for none.
    pid: AtomicU32,
    /// The highest mark of the slot's task processes that were noted.
    noted: AtomicU64,
}

impl TaskProcessPeak {
    /// Task process `pid` now runs for the slot.
    pub fn started(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Notes the running task process's mark (before it is reaped, when
    /// the kernel forgets it).
    pub fn note(&self) {
        self.peak();
    }

    /// The running task process is about to be reaped: noted, and not read again.
    pub fn ending(&self) {
        self.note();
        self.pid.store(0, Ordering::Relaxed);
    }

    /// The slot's peak so far, its running process's reading kept (the
    /// process may die before the next).
    pub fn peak(&self) -> u64 {
        let running = self.running_peak().unwrap_or(0);
        self.noted.fetch_max(running, Ordering::Relaxed).max(running)
    }

    fn running_peak(&self) -> Option<u64> {
        match self.pid.load(Ordering::Relaxed) {
            0 => None,
            pid => peak_rss(Some(pid)),
        }
    }
}

/// A worker's memory as it reports it: its own mark and each slot's.
#[derive(Debug, Clone)]
pub struct MemoryGauge {
    budget: Option<u64>,
    slots: Arc<[Arc<TaskProcessPeak>]>,
}

impl MemoryGauge {
    /// A gauge for a worker of `slots` slots and `budget`.
    pub fn new(budget: Option<u64>, slots: usize) -> MemoryGauge {
        MemoryGauge { budget, slots: (0..slots).map(|_| Arc::default()).collect() }
    }

    /// Slot `slot`'s peak, for its task processes to note in.
    pub fn slot(&self, slot: usize) -> Arc<TaskProcessPeak> {
        self.slots.get(slot).cloned().unwrap_or_default()
    }

    /// The worker's memory now.
    pub fn read(&self) -> WorkerMemory {
        let slots = self.slots.iter().map(|slot| slot.peak()).sum::<u64>().max(largest_reaped_child());
        let peak_rss_bytes = peak_rss(None).map(|own| own + slots);
        WorkerMemory { peak_rss_bytes, budget_bytes: self.budget }
    }
}

/// The peak resident memory of the largest child this process has reaped:
/// what the kernel still knows of a task process that died mid-attempt.
fn largest_reaped_child() -> u64 {
    // SAFETY: all-zero bytes are a valid `rusage` (a plain C struct of
    // integers), which getrusage overwrites.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only the struct it is given, alive for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0;
    }
    // In KiB on Linux.
    u64::try_from(usage.ru_maxrss).unwrap_or(0).saturating_mul(1024)
}

/// Gives memory that a finished task freed back to the system, so that
/// the slot's next task starts from a low resident mark.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of the allocator's own
    // heaps to the kernel; it touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes as whole MiB for messages, rounded up (a requirement) or down (a
/// budget): `48 MiB`.
fn mib_up(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

fn mib_down(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_shared_equally_after_the_processes_own_memory() {
        let slot = divide(WORKER_BASE_BYTES + 4 * TASK_PROCESS_BASE_BYTES + 4 * (64 << 20), 4).unwrap();
        assert_eq!(slot.share_bytes, 64 << 20);
        assert_eq!((slot.input_bytes, slot.map_buffer_bytes, slot.fetch_bytes), (16 << 20, 16 << 20, 16 << 20));
        assert_eq!(slot.longest_line_bytes(), Some(16 << 20));
        assert_eq!(SlotMemory::unbounded().longest_line_bytes(), None);
        assert_eq!(slot.input_piece_bytes(), 4 << 20);
        // 8 MiB of readers at ~144 KiB each.
        assert_eq!(slot.fan_in, 56);
        // Large shares read as many runs at once as without a budget.
        assert_eq!(divide(64 << 30, 4).unwrap().fan_in, crate::fan_in::MERGE_FAN_IN);
    }

    #[test]
    fn a_budget_below_the_minimum_is_refused_with_the_minimum() {
        let (worker, per_slot) = (WORKER_BASE_BYTES >> 20, (TASK_PROCESS_BASE_BYTES + MIN_SLOT_BYTES) >> 20);
        assert_eq!(divide(minimum_budget(2), 2).unwrap().share_bytes, MIN_SLOT_BYTES);
        // One byte short: the budget rounds down, the need up.
        let e = divide(minimum_budget(2) - 1, 2).unwrap_err();
        let (given, least) = ((minimum_budget(2) >> 20) - 1, minimum_budget(2) >> 20);
        assert_eq!(
            e.to_string(),
            format!("--memory {given} MiB is too small for 2 slots: the worker needs {worker} MiB of its own and {per_slot} MiB per slot (give --memory {least} MiB or more, or fewer --slots)")
        );
        assert_eq!(divide(10 << 20, 1).unwrap_err().to_string().split(':').next(), Some("--memory 10 MiB is too small for 1 slot"));
        let defaulted = BudgetTooSmall { budget: 40 << 20, defaulted: true, slots: 16 };
        assert!(
            defaulted.to_string().starts_with("the default --memory (40 MiB, half this machine's memory) is too small for 16 slots"),
            "{defaulted}"
        );
    }

    #[test]
    fn the_slots_a_budget_allows_are_those_it_can_divide_among() {
        for slots in 1..=8 {
            assert_eq!(slots_within(minimum_budget(slots)), slots);
            assert_eq!(slots_within(minimum_budget(slots) - 1), slots - 1);
            assert!(divide(minimum_budget(slots), slots).is_ok());
        }
        assert_eq!(slots_within(0), 0);
    }

    #[test]
    fn a_workers_peak_only_grows_and_its_budget_is_its_latest() {
        let said = |peak, budget| WorkerMemory { peak_rss_bytes: peak, budget_bytes: budget };
        assert_eq!(said(Some(50), Some(100)).then(said(Some(40), Some(200))), said(Some(50), Some(200)));
        assert_eq!(said(Some(50), None).then(said(None, None)), said(Some(50), None));
        assert_eq!(WorkerMemory::default().then(said(Some(7), Some(9))), said(Some(7), Some(9)));
    }

    #[test]
    fn kernel_fields_are_read_in_bytes() {
        let status = "Name:\tmr-worker\nVmPeak:\t  300000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(meminfo_field(status, "VmHWM"), Some(50 << 20));
        assert_eq!(meminfo_field("MemTotal:       16384 kB\n", "MemTotal"), Some(16 << 20));
        assert_eq!(meminfo_field("MemTotalX: 5 kB\n", "MemTotal"), None);
        assert_eq!(meminfo_field("VmHWM: 5 MB\n", "VmHWM"), None);
        // This process has a peak, and the machine some memory.
        assert!(peak_rss(None).is_some_and(|peak| peak > 0));
        assert!(default_budget().is_some_and(|bytes| bytes > 0));
    }
}
