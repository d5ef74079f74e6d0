//! Bounded fan-in: no merge reads more than [`MERGE_FAN_IN`] runs at once.
//!
//! A reduce merges one run per map task and a map merges one run per spill;
//! each run read is an open file and a block of memory. A job of 5,000 small
//! inputs would have each reduce hold 5,000 descriptors, past the usual
//! limit of 1,024. So when a merge has more runs than the fan-in, runs are
//! first merged in groups into *scratch runs*, as Hadoop does with
//! `io.sort.factor`, until the final merge reads at most the fan-in. Each
//! pass merges only as many runs as it takes to get there, so 100 runs cost
//! one extra pass over 64 of them, not over all 100.
//!
//! Groups are always runs that stand next to each other, and a scratch run
//! takes its group's place, so equal keys still come out in the order of
//! the runs given (the merge is stable, as [`crate::merge`] promises).
//!
//! Runs are opened only when their group is merged, and a scratch run's
//! file is removed as soon as it is opened for reading (the open descriptor
//! keeps it readable), so at any moment a merge holds at most the fan-in
//! readers plus one writer, and leaves no scratch files behind. A scratch
//! file left by a worker killed mid-write lies in the job directory, which
//! the coordinator removes with the job.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::merge::{MergeError, RunMerger};
use crate::runfile::{Compression, RunError, RunReader, RunWriter};

/// The most runs one merge reads at once, where the task's memory
/// ([`crate::memory_budget`]) and its process's descriptors
/// ([`descriptor_fan_in`]) allow; each reader holds one block of memory and
/// one open file. It was 64: a job of more than 64 maps (a sort over 6 GiB
/// in 64 MiB splits has 96) then wrote and read about half of every
/// reduce's input again in a first pass, work that grows faster than the
/// data; 512 readers take 32 to 72 MiB, and a merge's loser tree is only
/// three levels deeper.
pub const MERGE_FAN_IN: usize = 512;

/// The fan-in this process's open-file limit allows: half its soft limit
/// (the other half for its connections, the output and scratch files, and
/// a map's spills beside a merge), at most [`MERGE_FAN_IN`] and at least 2.
pub fn descriptor_fan_in() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct it is given, alive for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return MERGE_FAN_IN.min(64);
    }
    usize::try_from(limit.rlim_cur / 2).unwrap_or(usize::MAX).clamp(2, MERGE_FAN_IN)
}

/// Raises this process's soft open-file limit to its hard limit (best
/// effort): a reduce merging hundreds of runs in one pass needs more than
/// the usual soft 1,024 once it also holds its connections.
pub fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write only the struct they
    // are given, alive for each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The label [`MergeError`] carries for a failure reading a scratch run:
/// not any map task's fault (labels of given runs are the caller's).
pub const SCRATCH_LABEL: u32 = u32::MAX;

/// A run to merge: one the caller gave, not yet opened, or a scratch run
/// an earlier pass wrote.
enum PendingRun<R> {
    Given(u32, R),
    Scratch(ScratchFile),
}

/// A scratch run's file, removed when dropped (after it was opened, or
/// when the merge fails before reading it).
struct ScratchFile(PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        // Already gone once opened and dropped; any other failure leaves
        // litter in the job directory, which the coordinator removes.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where scratch runs go and how they are written.
pub struct Scratch<'a> {
    /// Scratch run `n` is the file `"{prefix}.merge-{n}.runs"`; the prefix
    /// names the attempt, so attempts never share a scratch file.
    pub prefix: &'a Path,
    /// Compression of scratch runs (the job's intermediate compression).
    pub compression: Compression,
    /// The most runs one merge reads at once (at least 2).
    pub fan_in: usize,
}

impl Scratch<'_> {
    fn path(&self, n: usize) -> PathBuf {
        let mut name = self.prefix.as_os_str().to_owned();
        name.push(format!(".merge-{n}.runs"));
        PathBuf::from(name)
    }
}

/// Opens `runs` for one final merge, first merging groups of them into
/// scratch runs while there are more than `scratch.fan_in`.
///
/// `open` opens a given run; `merge` merges opened runs, in order, into the
/// open run of a writer (a map combines there; a reduce copies). Returns
/// at most `scratch.fan_in` opened runs, each with its label: a given
/// run's own, or [`SCRATCH_LABEL`]. A failure opening or reading a given
/// run carries that run's label, wherever it happens.
pub fn open_with_bounded_fan_in<R, E>(
    runs: Vec<(u32, R)>,
    scratch: &Scratch<'_>,
    mut open: impl FnMut(u32, &R) -> Result<RunReader, E>,
    mut merge: impl FnMut(Vec<(u32, RunReader)>, &mut RunWriter) -> Result<(), E>,
) -> Result<Vec<(u32, RunReader)>, E>
where
    E: From<MergeError>,
{
    assert!(scratch.fan_in >= 2, "a merge must read at least two runs");
    let mut pending: Vec<PendingRun<R>> = runs.into_iter().map(|(label, run)| PendingRun::Given(label, run)).collect();
    let mut written = 0;
    loop {
        let groups = next_pass(pending.len(), scratch.fan_in);
        if groups.is_empty() {
            return pending.iter().map(|run| open_pending(run, &mut open)).collect();
        }
        // Groups are replaced back to front, so earlier ranges stay valid.
        for group in groups.into_iter().rev() {
            let readers = pending[group.clone()].iter().map(|run| open_pending(run, &mut open)).collect::<Result<Vec<_>, E>>()?;
            let path = scratch.path(written);
            written += 1;
            let mut writer = RunWriter::create(&path, scratch.compression).map_err(scratch_error)?;
            writer.begin_run().map_err(scratch_error)?;
            merge(readers, &mut writer)?;
            writer.end_run().map_err(scratch_error)?;
            let merged = PendingRun::Scratch(ScratchFile(writer.finish().map_err(scratch_error)?));
            // Dropping the group removes its scratch files, now merged.
            pending.splice(group, [merged]);
        }
    }
}

/// A failure writing or reading a scratch run.
fn scratch_error(source: RunError) -> MergeError {
    MergeError { label: SCRATCH_LABEL, source }
}

/// Opens one pending run; a scratch run's file is removed once open.
fn open_pending<R, E: From<MergeError>>(run: &PendingRun<R>, open: &mut impl FnMut(u32, &R) -> Result<RunReader, E>) -> Result<(u32, RunReader), E> {
    match run {
        PendingRun::Given(label, run) => Ok((*label, open(*label, run)?)),
        PendingRun::Scratch(file) => {
            let reader = RunReader::open(&file.0).map_err(scratch_error)?;
            let _ = std::fs::remove_file(&file.0);
            Ok((SCRATCH_LABEL, reader))
        }
    }
}

/// The groups of consecutive runs to merge in the next pass, for `runs`
/// runs and a fan-in of `fan_in`: none when the runs fit; otherwise as few
/// runs as it takes to bring the count down to the fan-in (a group of `g`
/// runs lowers it by `g - 1`: full groups, and one smaller for the rest);
/// or, when that needs more runs than there are, every run, in groups of
/// even size, and another pass after.
fn next_pass(runs: usize, fan_in: usize) -> Vec<Range<usize>> {
    if runs <= fan_in {
        return Vec::new();
    }
    let excess = runs - fan_in;
    let mut sizes = vec![fan_in; excess / (fan_in - 1)];
    if !excess.is_multiple_of(fan_in - 1) {
        sizes.push(excess % (fan_in - 1) + 1);
    }
    if sizes.iter().sum::<usize>() > runs {
        let groups = runs.div_ceil(fan_in);
        // (A group of one would be copied for nothing: only at fan-in 2.)
        return (0..groups).map(|g| g * runs / groups..(g + 1) * runs / groups).filter(|g| g.len() > 1).collect();
    }
    let mut start = 0;
    sizes
        .into_iter()
        .map(|size| {
            start += size;
            start - size..start
        })
        .collect()
}

/// Merges `readers` into the open run of `writer`, copying every record:
/// the merge a reduce's extra passes use.
pub fn copy_merged(readers: Vec<(u32, RunReader)>, writer: &mut RunWriter) -> Result<(), MergeError> {
    let mut merger = RunMerger::new(readers)?;
    let mut key = Vec::new();
    while let Some(next) = merger.next_key()? {
        key.clear();
        key.extend_from_slice(next);
        while let Some(value) = merger.next_value_of_current()? {
            writer.append(&key, value).map_err(scratch_error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::XorShift;

    #[test]
    fn a_pass_merges_only_what_it_takes_to_reach_the_fan_in() {
        assert!(next_pass(64, 64).is_empty());
        assert!(next_pass(0, 2).is_empty());
        // 65 runs: merging 2 leaves 64; 100: merging 37 does.
        assert_eq!(next_pass(65, 64), vec![0..2]);
        assert_eq!(next_pass(100, 64), vec![0..37]);
        assert_eq!(next_pass(127, 64), vec![0..64]);
        assert_eq!(next_pass(128, 64), vec![0..64, 64..66]);
        // 5,000 runs: every run, in 79 groups of 63 or 64, then one more pass.
        let first = next_pass(5000, 64);
        assert_eq!(first.len(), 79);
        assert!(first.iter().all(|g| (63..=64).contains(&g.len())));
        assert_eq!(first.last().unwrap().end, 5000);
        assert_eq!(next_pass(79, 64), vec![0..16]);
    }

    #[test]
    fn passes_always_end_within_the_fan_in_and_cover_consecutive_runs() {
        for fan_in in 2..9 {
            for runs in 0..300 {
                let mut n = runs;
                for _ in 0..40 {
                    let groups = next_pass(n, fan_in);
                    if groups.is_empty() {
                        break;
                    }
                    // Consecutive, disjoint, within bounds, each of 2..=fan_in runs.
                    assert!(groups.windows(2).all(|w| w[0].end <= w[1].start));
                    assert!(groups.iter().all(|g| g.end <= n && (2..=fan_in).contains(&g.len())), "{runs} runs, fan-in {fan_in}: {groups:?}");
                    n -= groups.iter().map(|g| g.len() - 1).sum::<usize>();
                }
                assert!(n <= fan_in, "{runs} runs, fan-in {fan_in}: {n} left");
            }
        }
    }

    fn write_run(path: &Path, records: &[(Vec<u8>, Vec<u8>)]) {
        let mut writer = RunWriter::create(path, Compression::Lz4).unwrap();
        writer.begin_run().unwrap();
        for (k, v) in records {
            writer.append(k, v).unwrap();
        }
        writer.end_run().unwrap();
        writer.finish().unwrap();
    }

    fn merged(readers: Vec<(u32, RunReader)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut merger = RunMerger::new(readers).unwrap();
        let mut out = Vec::new();
        while let Some(key) = merger.next_key().unwrap() {
            let key = key.to_vec();
            while let Some(value) = merger.next_value_of_current().unwrap() {
                out.push((key.clone(), value.to_vec()));
            }
        }
        out
    }

    fn open_run(label: u32, path: &Path) -> Result<RunReader, MergeError> {
        RunReader::open(path).map_err(|source| MergeError { label, source })
    }

    #[test]
    fn many_runs_merge_through_scratch_runs_like_a_stable_sort_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = XorShift::new(7);
        let mut all = Vec::new();
        let mut runs = Vec::new();
        for r in 0..150u32 {
            let mut records: Vec<(Vec<u8>, Vec<u8>)> =
                (0..rng.below(20)).map(|i| (format!("k{}", rng.below(30)).into_bytes(), format!("run{r}-{i}").into_bytes())).collect();
            records.sort_by(|a, b| a.0.cmp(&b.0));
            all.extend(records.iter().cloned());
            let path = dir.path().join(format!("given-{r}.runs"));
            write_run(&path, &records);
            runs.push((r, path));
        }
        // A stable sort by key keeps each key's values in run order.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let scratch = Scratch { prefix: &dir.path().join("reduce-0"), compression: Compression::Lz4, fan_in: 4 };
        let mut opened = 0;
        let readers = open_with_bounded_fan_in(
            runs,
            &scratch,
            |label, path| {
                opened += 1;
                open_run(label, path)
            },
            copy_merged,
        )
        .unwrap();
        assert_eq!(opened, 150, "each given run is opened once");
        assert!(readers.len() <= 4);
        assert_eq!(merged(readers), all);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with("given-"))
            .collect();
        assert!(left.is_empty(), "scratch files left: {left:?}");
    }

    #[test]
    fn a_broken_given_run_is_named_by_its_label_even_in_an_early_pass() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Vec::new();
        for r in 0..10u32 {
            let path = dir.path().join(format!("given-{r}.runs"));
            write_run(&path, &[(b"k".to_vec(), format!("{r}").into_bytes())]);
            runs.push((r, path));
        }
        std::fs::write(&runs[2].1, b"not a run").unwrap();
        let scratch = Scratch { prefix: &dir.path().join("reduce-0"), compression: Compression::None, fan_in: 3 };
        let open = |label, path: &PathBuf| RunReader::open(path).map_err(|source| MergeError { label, source });
        let Err(e) = open_with_bounded_fan_in(runs, &scratch, open, copy_merged) else { panic!("a broken run was merged") };
        assert_eq!(e.label, 2);
        let left =
            std::fs::read_dir(dir.path()).unwrap().filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with("given-")).count();
        assert_eq!(left, 0, "a failed merge leaves no scratch files");
    }
}
