//! The workers of the standing cluster as every job sees them: who is
//! connected, their labels and slots, and the load each heartbeat carries.
//! Plain state with no I/O; time is passed in.
//!
//! A worker over one of its [`LoadLimits`] (a busy CPU, little free memory,
//! a nearly full work directory) gets no new task until a heartbeat shows
//! it back under; its running tasks are left alone. Labels say what a
//! worker offers (`gpu`, `zone=a`): a job's required labels decide which
//! workers may run its tasks, and [`crate::cluster::queue`] asks this
//! registry why a job gets none.
//!
//! Everything here that a worker sends is hostile until checked: labels
//! are parsed by [`Label::from_str`](std::str::FromStr) (also when they
//! arrive through serde), and a load that is not a number is treated as
//! over the limit, never as under it.

#![warn(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::memory_budget::WorkerMemory;
use crate::progress::human_bytes;
use crate::rpc::WorkerId;
use crate::untrusted::{excerpt, EXCERPT_CHARS};

/// The longest a label's key may be, in bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 64;

/// The longest a label's value may be, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;

/// What a worker offers (`gpu`, `zone=a`), or what a job requires of the
/// workers that run its tasks: a key, and maybe a value. Written `KEY` or
/// `KEY=VALUE`; the key is ASCII letters, digits and `_ . -`, the value the same
/// and `/ :` (so that a path or a host and port fit).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label {
    /// Not empty, at most [`MAX_LABEL_KEY_BYTES`], key characters only.
    key: String,
    /// When present: not empty, at most [`MAX_LABEL_VALUE_BYTES`], value
    /// characters only.
    value: Option<String>,
}

impl Label {
    /// The key: `zone` in `zone=a`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value: `a` in `zone=a`, `None` in `gpu`.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// Whether a worker with this label meets `requirement`: the same key,
    /// and the same value unless the requirement names none. A worker with
    /// `zone=a` meets `zone=a` and `zone`; a worker with `zone` meets only
    /// `zone`, since what zone it is in is unknown.
    pub fn meets(&self, requirement: &Label) -> bool {
        self.key == requirement.key && (requirement.value.is_none() || self.value == requirement.value)
    }
}

/// Whether a worker with `labels` meets every one of `requirements`.
pub fn meets_all(labels: &[Label], requirements: &[Label]) -> bool {
    requirements.iter().all(|requirement| labels.iter().any(|label| label.meets(requirement)))
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

impl std::str::FromStr for Label {
    type Err = LabelError;

    fn from_str(text: &str) -> Result<Label, LabelError> {
        let refuse = |problem| LabelError { label: excerpt(text, EXCERPT_CHARS), problem };
        let (key, value) = match text.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (text, None),
        };
        if let Some(problem) = part_problem(key, MAX_LABEL_KEY_BYTES, KEY_CHARS) {
            return Err(refuse(LabelProblem::Key(problem)));
        }
        if let Some(problem) = value.and_then(|value| part_problem(value, MAX_LABEL_VALUE_BYTES, VALUE_CHARS)) {
            return Err(refuse(LabelProblem::Value(problem)));
        }
        Ok(Label { key: key.to_owned(), value: value.map(str::to_owned) })
    }
}

impl TryFrom<String> for Label {
    type Error = LabelError;

    fn try_from(text: String) -> Result<Label, LabelError> {
        text.parse()
    }
}

impl From<Label> for String {
    fn from(label: Label) -> String {
        label.to_string()
    }
}

/// The characters of a label's key besides ASCII letters and digits.
const KEY_CHARS: &str = "_.-";

/// The characters of a label's value besides ASCII letters and digits.
const VALUE_CHARS: &str = "_.-/:";

/// What is wrong with a label's key or value, if anything: empty, longer
/// than `max_bytes`, or a character other than ASCII letters, digits and
/// `punctuation`. The length is checked first, so that a long text is not
/// read through.
fn part_problem(part: &str, max_bytes: usize, punctuation: &'static str) -> Option<PartProblem> {
    if part.is_empty() {
        return Some(PartProblem::Empty);
    }
    if part.len() > max_bytes {
        return Some(PartProblem::TooLong { bytes: part.len(), max_bytes });
    }
    let found = part.chars().find(|&c| !c.is_ascii_alphanumeric() && !punctuation.contains(c))?;
    Some(PartProblem::BadChar { found, punctuation })
}

/// A text that is not a label, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{label}' is not a label (KEY or KEY=VALUE): {problem}")]
pub struct LabelError {
    /// The text, cut and escaped for a log line.
    pub label: String,
    /// What is wrong with it.
    pub problem: LabelProblem,
}

/// Which part of a label is wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelProblem {
    /// The key: before the first `=`, or all of it.
    #[error("its key {0}")]
    Key(PartProblem),
    /// The value: after the first `=`. An empty one is refused: `KEY=`
    /// would be a second way to write `KEY`.
    #[error("its value {0}")]
    Value(PartProblem),
}

/// What is wrong with a label's key or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartProblem {
    /// It is empty.
    #[error("is empty")]
    Empty,
    /// It is longer than its limit ([`MAX_LABEL_KEY_BYTES`] or
    /// [`MAX_LABEL_VALUE_BYTES`]).
    #[error("is {bytes} bytes, more than {max_bytes}")]
    TooLong {
        /// Its length.
        bytes: usize,
        /// Its limit.
        max_bytes: usize,
    },
    /// It has a character other than ASCII letters, digits and its
    /// punctuation.
    #[error("has {found:?}; it may have only ASCII letters, digits and {punctuation}")]
    BadChar {
        /// The first such character.
        found: char,
        /// The punctuation it may have.
        punctuation: &'static str,
    },
}

/// The load a worker's heartbeat carries.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Load {
    /// The machine's one-minute load average (runnable processes).
    pub load_average: f64,
    /// Memory available to new processes, in bytes.
    pub free_memory_bytes: u64,
    /// Free space on the file system of the worker's work directory, in
    /// bytes: where map outputs are written.
    pub free_disk_bytes: u64,
}

/// When a worker is too busy or too full to take another task.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadLimits {
    /// The most load average per core at which a worker still takes tasks.
    /// `f64::INFINITY` turns this check off; a NaN holds every worker back
    /// (the comparison fails closed), so the flag parser should refuse one.
    pub max_load_per_core: f64,
    /// The least free memory at which a worker still takes tasks, in bytes.
    pub min_free_memory_bytes: u64,
    /// The least free space in the work directory at which a worker still
    /// takes tasks, in bytes.
    pub min_free_disk_bytes: u64,
}

impl Default for LoadLimits {
    /// A load of 2 per core: a machine running its slots' tasks has about
    /// one per core, so twice that means something else is also busy on it
    /// (or it is swapping) and a new task there would be a straggler. 256
    /// MiB of memory: room for a task process and its sort buffer without
    /// pushing the machine into its OOM killer. 1 GiB of disk: one map's
    /// output of a typical split, so that a task started there can finish
    /// rather than fail on a full disk.
    fn default() -> Self {
        LoadLimits { max_load_per_core: 2.0, min_free_memory_bytes: 256 << 20, min_free_disk_bytes: 1 << 30 }
    }
}

impl LoadLimits {
    /// Which limit `load` is over on a machine with `cores` (0 counts as
    /// 1), and by how much; `None` when it is under all three. The load
    /// average is checked first, then memory, then disk. A load average
    /// that is NaN, negative or infinite cannot be judged, and is treated
    /// as over the limit until the worker reports a usable one.
    pub fn exceeded(&self, load: &Load, cores: u32) -> Option<OverLimit> {
        let load_average = load.load_average;
        if !load_average.is_finite() || load_average < 0.0 {
            return Some(OverLimit::UnusableLoadAverage(load_average));
        }
        let max_load = self.max_load_per_core * f64::from(cores.max(1));
        // A NaN limit fails closed.
        if max_load.is_nan() || load_average > max_load {
            return Some(OverLimit::LoadAverage { load_average, max_load });
        }
        if load.free_memory_bytes < self.min_free_memory_bytes {
            return Some(OverLimit::FreeMemory { free_bytes: load.free_memory_bytes, min_bytes: self.min_free_memory_bytes });
        }
        if load.free_disk_bytes < self.min_free_disk_bytes {
            return Some(OverLimit::FreeDisk { free_bytes: load.free_disk_bytes, min_bytes: self.min_free_disk_bytes });
        }
        None
    }
}

/// Which load limit a worker is over, and by how much.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum OverLimit {
    /// Its load average is above the limit for its cores.
    LoadAverage {
        /// What it reported.
        load_average: f64,
        /// The limit for its cores.
        max_load: f64,
    },
    /// It reported a load average that is NaN, negative or infinite.
    UnusableLoadAverage(f64),
    /// It has less free memory than the minimum.
    FreeMemory {
        /// What it reported.
        free_bytes: u64,
        /// The minimum.
        min_bytes: u64,
    },
    /// Its work directory has less free space than the minimum.
    FreeDisk {
        /// What it reported.
        free_bytes: u64,
        /// The minimum.
        min_bytes: u64,
    },
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |free: u64, min: u64| human_bytes(min.saturating_sub(free) as f64);
        match *self {
            OverLimit::LoadAverage { load_average, max_load } => {
                write!(f, "load average {load_average:.2} is {:.2} over its limit of {max_load:.2}", load_average - max_load)
            }
            OverLimit::UnusableLoadAverage(load_average) => write!(f, "it reported a load average of {load_average}, which is no load"),
            OverLimit::FreeMemory { free_bytes, min_bytes } => write!(
                f,
                "free memory {} is {} under its minimum of {}",
                human_bytes(free_bytes as f64),
                short(free_bytes, min_bytes),
                human_bytes(min_bytes as f64)
            ),
            OverLimit::FreeDisk { free_bytes, min_bytes } => write!(
                f,
                "free space in its work directory {} is {} under its minimum of {}",
                human_bytes(free_bytes as f64),
                short(free_bytes, min_bytes),
                human_bytes(min_bytes as f64)
            ),
        }
    }
}

/// What the queue needs to know of a worker to choose a job for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerView<'a> {
    /// The worker's labels.
    pub labels: &'a [Label],
    /// Whether it takes new tasks now (under its load limits).
    pub accepts_tasks: bool,
}

/// One connected worker, for `mr workers` and the status page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveWorker<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its labels.
    pub labels: &'a [Label],
    /// How many tasks it runs at once.
    pub slots: u32,
    /// Its cores, as it said when it joined.
    pub cores: u32,
    /// The load of its latest heartbeat; `None` before the first.
    pub load: Option<Load>,
    /// Its peak memory and budget, as it last said.
    pub memory: WorkerMemory,
    /// Why it takes no new tasks now, if it does not.
    pub over_limit: Option<OverLimit>,
    /// When it was last heard from (joined or sent a heartbeat).
    pub last_heard: Instant,
}

/// What the registry keeps of one worker.
#[derive(Debug, Clone)]
struct WorkerEntry {
    labels: Vec<Label>,
    slots: u32,
    cores: u32,
    /// `None` until its first heartbeat.
    load: Option<Load>,
    memory: WorkerMemory,
    last_heard: Instant,
}

/// The connected workers, by id.
#[derive(Debug, Clone)]
pub struct Workers {
    limits: LoadLimits,
    workers: BTreeMap<WorkerId, WorkerEntry>,
}

impl Workers {
    /// No workers yet; those that join are held to `limits`.
    pub fn new(limits: LoadLimits) -> Workers {
        Workers { limits, workers: BTreeMap::new() }
    }

    /// The limits workers are held to.
    pub fn limits(&self) -> &LoadLimits {
        &self.limits
    }

    /// Worker `id` joined (or joined again: what it says now replaces what
    /// it said before). Until its first heartbeat its load is unknown and
    /// it takes tasks: holding it back would only delay the first task by
    /// a heartbeat, and that heartbeat stops new tasks if it is loaded.
    pub fn joined(&mut self, id: &str, labels: Vec<Label>, slots: u32, cores: u32, now: Instant) {
        self.workers.insert(id.to_owned(), WorkerEntry { labels, slots, cores, load: None, memory: WorkerMemory::default(), last_heard: now });
    }

    /// A heartbeat from `id` carrying its `load`; false if no such worker
    /// joined (it must join first, saying its labels and slots).
    pub fn heartbeat(&mut self, id: &str, load: Load, now: Instant) -> bool {
        match self.workers.get_mut(id) {
            Some(worker) => {
                worker.load = Some(load);
                worker.last_heard = worker.last_heard.max(now);
                true
            }
            None => false,
        }
    }

    /// Worker `id` says this of its memory (its peak only grows).
    pub fn memory_reported(&mut self, id: &str, memory: WorkerMemory) {
        if let Some(worker) = self.workers.get_mut(id) {
            worker.memory = worker.memory.then(memory);
        }
    }

    /// Worker `id` is alive, but could not tell its load this time (it
    /// keeps the last it told); false if no such worker joined.
    pub fn touch(&mut self, id: &str, now: Instant) -> bool {
        match self.workers.get_mut(id) {
            Some(worker) => {
                worker.last_heard = worker.last_heard.max(now);
                true
            }
            None => false,
        }
    }

    /// Worker `id` left (its connection closed); false if it was not here.
    pub fn left(&mut self, id: &str) -> bool {
        self.workers.remove(id).is_some()
    }

    /// Removes the workers not heard from for longer than `silence` and
    /// returns their ids: a crashed or cut-off worker whose connection has
    /// not closed yet.
    pub fn expire(&mut self, now: Instant, silence: Duration) -> Vec<WorkerId> {
        let silent: Vec<WorkerId> =
            self.workers.iter().filter(|(_, worker)| now.saturating_duration_since(worker.last_heard) > silence).map(|(id, _)| id.clone()).collect();
        for id in &silent {
            self.workers.remove(id);
        }
        silent
    }

    /// Whether worker `id` is here and under its load limits.
    pub fn accepts_tasks(&self, id: &str) -> bool {
        self.workers.get(id).is_some_and(|worker| self.over_limit(worker).is_none())
    }

    /// What the queue needs of worker `id`, if it is here.
    pub fn view(&self, id: &str) -> Option<WorkerView<'_>> {
        self.workers.get(id).map(|worker| self.view_of(worker))
    }

    /// Every connected worker, by id.
    pub fn live(&self) -> impl Iterator<Item = LiveWorker<'_>> + '_ {
        self.workers.iter().map(|(id, worker)| LiveWorker {
            id,
            labels: &worker.labels,
            slots: worker.slots,
            cores: worker.cores,
            load: worker.load,
            memory: worker.memory,
            over_limit: self.over_limit(worker),
            last_heard: worker.last_heard,
        })
    }

    /// Whether any connected worker has labels meeting `requirements`,
    /// loaded or not.
    pub fn meets(&self, requirements: &[Label]) -> bool {
        self.workers.values().any(|worker| meets_all(&worker.labels, requirements))
    }

    /// Whether any connected worker has labels meeting `requirements` and
    /// takes tasks now.
    pub fn accepts_any(&self, requirements: &[Label]) -> bool {
        self.workers.values().map(|worker| self.view_of(worker)).any(|view| view.accepts_tasks && meets_all(view.labels, requirements))
    }

    fn view_of<'a>(&self, worker: &'a WorkerEntry) -> WorkerView<'a> {
        WorkerView { labels: &worker.labels, accepts_tasks: self.over_limit(worker).is_none() }
    }

    fn over_limit(&self, worker: &WorkerEntry) -> Option<OverLimit> {
        worker.load.and_then(|load| self.limits.exceeded(&load, worker.cores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(text: &str) -> Label {
        text.parse().unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn labels(texts: &[&str]) -> Vec<Label> {
        texts.iter().map(|text| label(text)).collect()
    }

    fn problem(text: &str) -> LabelProblem {
        match text.parse::<Label>() {
            Ok(parsed) => panic!("{text:?} parsed as {parsed:?}"),
            Err(error) => error.problem,
        }
    }

    const GIB: u64 = 1 << 30;

    fn idle() -> Load {
        Load { load_average: 0.5, free_memory_bytes: 8 * GIB, free_disk_bytes: 100 * GIB }
    }

    #[test]
    fn good_labels_parse_and_print_back() {
        for text in ["gpu", "zone=a", "rack=r-12.b_3", "path=/data/x:9000", "A.b-C_9=Z/z:0"] {
            assert_eq!(label(text).to_string(), text);
        }
        let zone = label("zone=a");
        assert_eq!((zone.key(), zone.value()), ("zone", Some("a")));
        assert_eq!(label("gpu").value(), None);
    }

    fn bad_key(found: char) -> LabelProblem {
        LabelProblem::Key(PartProblem::BadChar { found, punctuation: KEY_CHARS })
    }

    fn bad_value(found: char) -> LabelProblem {
        LabelProblem::Value(PartProblem::BadChar { found, punctuation: VALUE_CHARS })
    }

    #[test]
    fn bad_labels_say_why() {
        assert_eq!(problem(""), LabelProblem::Key(PartProblem::Empty));
        assert_eq!(problem("=a"), LabelProblem::Key(PartProblem::Empty));
        assert_eq!(problem("zone="), LabelProblem::Value(PartProblem::Empty));
        assert_eq!(problem("zo ne"), bad_key(' '));
        assert_eq!(problem("path/x=1"), bad_key('/'));
        assert_eq!(problem("zone=a b"), bad_value(' '));
        assert_eq!(problem("zone=a=b"), bad_value('='));
        assert_eq!(problem("zone=a\n"), bad_value('\n'));
        let error = "zo ne".parse::<Label>().unwrap_err().to_string();
        assert_eq!(error, "'zo ne' is not a label (KEY or KEY=VALUE): its key has ' '; it may have only ASCII letters, digits and _.-");
    }

    #[test]
    fn multibyte_labels_are_refused_without_panicking() {
        assert_eq!(problem("zöne"), bad_key('ö'));
        assert_eq!(problem("zone=ä"), bad_value('ä'));
        assert_eq!(problem("🙂=🙂"), bad_key('🙂'));
        // A key of multibyte characters too long in bytes but not in
        // characters: its length is refused before any character.
        assert_eq!(problem(&"é".repeat(40)), LabelProblem::Key(PartProblem::TooLong { bytes: 80, max_bytes: MAX_LABEL_KEY_BYTES }));
        // The message shows the text escaped, never a raw control character.
        let error = "a\u{1b}[2J".parse::<Label>().unwrap_err().to_string();
        assert!(!error.contains('\u{1b}'), "{error:?}");
    }

    #[test]
    fn labels_have_length_limits_in_bytes() {
        let key = "k".repeat(MAX_LABEL_KEY_BYTES);
        let value = "v".repeat(MAX_LABEL_VALUE_BYTES);
        assert_eq!(label(&format!("{key}={value}")).value(), Some(value.as_str()));
        let too_long = |bytes, max_bytes| PartProblem::TooLong { bytes, max_bytes };
        assert_eq!(problem(&format!("{key}k")), LabelProblem::Key(too_long(MAX_LABEL_KEY_BYTES + 1, MAX_LABEL_KEY_BYTES)));
        assert_eq!(problem(&format!("k={value}v")), LabelProblem::Value(too_long(MAX_LABEL_VALUE_BYTES + 1, MAX_LABEL_VALUE_BYTES)));
        let long = "x".repeat(10_000).parse::<Label>().unwrap_err();
        assert!(long.label.len() < 200, "a long label is cut in the message");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,80}|[a-z=/:]{0,200}") {
            if let Ok(parsed) = text.parse::<Label>() {
                proptest::prop_assert_eq!(parsed.to_string(), text);
            }
        }
    }

    #[test]
    fn labels_go_through_serde_as_text_and_are_checked_there() {
        assert_eq!(serde_json::to_string(&label("zone=a")).unwrap(), "\"zone=a\"");
        assert_eq!(serde_json::from_str::<Label>("\"gpu\"").unwrap(), label("gpu"));
        assert!(serde_json::from_str::<Label>("\"bad label\"").is_err());
    }

    #[test]
    fn a_valued_label_meets_its_key_and_a_bare_one_meets_only_its_key() {
        assert!(label("zone=a").meets(&label("zone=a")));
        assert!(label("zone=a").meets(&label("zone")));
        assert!(!label("zone=a").meets(&label("zone=b")));
        assert!(label("zone").meets(&label("zone")));
        assert!(!label("zone").meets(&label("zone=a")));
        assert!(!label("gpu").meets(&label("zone")));
        let worker = labels(&["zone=a", "gpu"]);
        assert!(meets_all(&worker, &[]));
        assert!(meets_all(&worker, &labels(&["gpu", "zone=a"])));
        assert!(!meets_all(&worker, &labels(&["gpu", "ssd"])));
    }

    #[test]
    fn each_load_limit_is_named_with_how_far_over() {
        let limits = LoadLimits::default();
        assert_eq!(limits.exceeded(&idle(), 4), None);
        let busy = Load { load_average: 9.5, ..idle() };
        assert_eq!(limits.exceeded(&busy, 4), Some(OverLimit::LoadAverage { load_average: 9.5, max_load: 8.0 }));
        assert_eq!(limits.exceeded(&busy, 8), None);
        assert_eq!(limits.exceeded(&Load { load_average: 2.0, ..idle() }, 0), None, "0 cores count as 1");
        assert_eq!(limits.exceeded(&busy, 4).unwrap().to_string(), "load average 9.50 is 1.50 over its limit of 8.00");
        let low_memory = Load { free_memory_bytes: 100 << 20, ..idle() };
        let over = limits.exceeded(&low_memory, 4).unwrap();
        assert_eq!(over, OverLimit::FreeMemory { free_bytes: 100 << 20, min_bytes: 256 << 20 });
        assert_eq!(over.to_string(), "free memory 100.0 MiB is 156.0 MiB under its minimum of 256.0 MiB");
        let full_disk = Load { free_disk_bytes: GIB / 2, ..idle() };
        assert_eq!(limits.exceeded(&full_disk, 4), Some(OverLimit::FreeDisk { free_bytes: GIB / 2, min_bytes: GIB }));
        // Over two limits: the load average is named first.
        assert!(matches!(limits.exceeded(&Load { load_average: 100.0, ..low_memory }, 4), Some(OverLimit::LoadAverage { .. })));
        // Exactly at a limit is still under it.
        let at_limits = Load { load_average: 8.0, free_memory_bytes: 256 << 20, free_disk_bytes: GIB };
        assert_eq!(limits.exceeded(&at_limits, 4), None);
    }

    #[test]
    fn an_unusable_load_average_counts_as_over_the_limit() {
        let limits = LoadLimits::default();
        for bad in [f64::NAN, -1.0, f64::INFINITY, f64::NEG_INFINITY] {
            let over = limits.exceeded(&Load { load_average: bad, ..idle() }, 4);
            assert!(matches!(over, Some(OverLimit::UnusableLoadAverage(_))), "{bad}: {over:?}");
        }
        let off = LoadLimits { max_load_per_core: f64::INFINITY, ..limits };
        assert_eq!(off.exceeded(&Load { load_average: 1e12, ..idle() }, 1), None, "an infinite limit is no limit");
        let nan_limit = LoadLimits { max_load_per_core: f64::NAN, ..limits };
        assert!(nan_limit.exceeded(&idle(), 1).is_some(), "a NaN limit fails closed");
    }

    #[test]
    fn a_worker_over_a_limit_takes_no_task_until_it_is_back_under() {
        let start = Instant::now();
        let mut workers = Workers::new(LoadLimits::default());
        assert!(!workers.accepts_tasks("w1"), "an unknown worker takes nothing");
        workers.joined("w1", labels(&["zone=a"]), 2, 4, start);
        assert!(workers.accepts_tasks("w1"), "a worker takes tasks before its first heartbeat");
        assert!(workers.heartbeat("w1", Load { load_average: 20.0, ..idle() }, start));
        assert!(!workers.accepts_tasks("w1"));
        let view = workers.view("w1").unwrap();
        assert!(!view.accepts_tasks);
        assert_eq!(view.labels, labels(&["zone=a"]).as_slice());
        assert!(workers.meets(&labels(&["zone"])), "a loaded worker still has its labels");
        assert!(!workers.accepts_any(&labels(&["zone"])));
        assert!(workers.heartbeat("w1", idle(), start));
        assert!(workers.accepts_tasks("w1"));
        assert!(workers.accepts_any(&labels(&["zone=a"])));
        assert!(!workers.meets(&labels(&["zone=b"])));
    }

    #[test]
    fn the_registry_lists_joins_and_forgets_workers() {
        let start = Instant::now();
        let mut workers = Workers::new(LoadLimits::default());
        assert!(!workers.heartbeat("ghost", idle(), start), "a heartbeat before joining is refused");
        assert!(workers.view("ghost").is_none());
        workers.joined("w2", Vec::new(), 1, 1, start);
        workers.joined("w1", labels(&["gpu"]), 4, 8, start);
        workers.heartbeat("w2", Load { free_disk_bytes: 0, ..idle() }, start + Duration::from_secs(1));
        let live: Vec<_> = workers.live().collect();
        assert_eq!(live.iter().map(|w| w.id).collect::<Vec<_>>(), ["w1", "w2"]);
        assert_eq!((live[0].slots, live[0].cores, live[0].load, live[0].over_limit), (4, 8, None, None));
        assert!(matches!(live[1].over_limit, Some(OverLimit::FreeDisk { .. })));
        assert_eq!(live[1].last_heard, start + Duration::from_secs(1));
        // A worker that joins again replaces what it said.
        workers.joined("w1", labels(&["ssd"]), 2, 8, start);
        assert!(!workers.meets(&labels(&["gpu"])));
        assert!(workers.left("w1"));
        assert!(!workers.left("w1"));
        assert!(!workers.accepts_tasks("w1"));
    }

    #[test]
    fn silent_workers_expire() {
        let start = Instant::now();
        let silence = Duration::from_secs(10);
        let mut workers = Workers::new(LoadLimits::default());
        workers.joined("quiet", Vec::new(), 1, 1, start);
        workers.joined("chatty", Vec::new(), 1, 1, start);
        workers.heartbeat("chatty", idle(), start + Duration::from_secs(8));
        assert!(workers.expire(start + silence, silence).is_empty(), "exactly the silence is not too long");
        assert_eq!(workers.expire(start + Duration::from_secs(11), silence), ["quiet"]);
        assert_eq!(workers.live().map(|w| w.id).collect::<Vec<_>>(), ["chatty"]);
        // A heartbeat that arrives with an earlier time does not move the
        // last heard time back; one from the past does not panic.
        workers.heartbeat("chatty", idle(), start);
        assert!(workers.expire(start, silence).is_empty());
    }
}
