//! Sort, as in the MapReduce paper: every input line, once per occurrence,
//! in byte order (what `LC_ALL=C sort` does). The output files, read in
//! order `mr-out-0`, `mr-out-1`, ..., form one totally ordered sequence.
//!
//! That takes range partitioning: partition `r` gets the keys between split
//! points `r-1` and `r`. The split points are quantiles of a sample of the
//! input lines, taken when the app is made for the job. Every worker makes
//! its own app, so the sample must not depend on chance: it reads the same
//! fixed windows of each input file ([`SAMPLE_WINDOWS_PER_FILE`] evenly
//! spaced windows, about [`SAMPLE_BYTES`] in all) and so finds the same split
//! points everywhere. Skewed data makes uneven partitions, never wrong ones.
//!
//! A line is the bytes before a newline (the last line of a file may lack
//! one); the output adds the newline back.

use mapreduce::{App, AppError, AppResult, Emitter, JobContext, MapInput, OutputFormat, Values};

/// Total bytes read from the inputs to choose split points.
pub const SAMPLE_BYTES: u64 = 4 << 20;
/// Windows sampled per input file.
pub const SAMPLE_WINDOWS_PER_FILE: u64 = 16;

/// The sort app.
pub struct Sort {
    /// Sorted; partition `r` holds keys `k` with `split_points[r-1] <= k < split_points[r]`.
    split_points: Vec<Vec<u8>>,
}

impl Sort {
    /// Samples the job's inputs and chooses `reduces - 1` split points.
    pub fn new(job: &JobContext) -> Result<Sort, AppError> {
        if job.reduces <= 1 {
            return Ok(Sort { split_points: Vec::new() });
        }
        let window = (SAMPLE_BYTES / (job.inputs.len().max(1) as u64 * SAMPLE_WINDOWS_PER_FILE)).clamp(1024, 1 << 20);
        let mut sample = Vec::new();
        for (input, (name, _)) in job.inputs.iter().enumerate() {
            sample_lines(job, input, window, &mut sample).map_err(|e| format!("sampling input {name}: {e}"))?;
        }
        sample.sort_unstable();
        let reduces = job.reduces as usize;
        let split_points = if sample.is_empty() { Vec::new() } else { (1..reduces).map(|r| sample[r * sample.len() / reduces].clone()).collect() };
        Ok(Sort { split_points })
    }
}

/// Adds the whole lines found in evenly spaced windows of input `input`
/// (read through the job, so that a worker without the file gets them
/// from the coordinator).
fn sample_lines(job: &JobContext, input: usize, window: u64, sample: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    let size = job.input_size(input)?;
    for w in 0..SAMPLE_WINDOWS_PER_FILE {
        let start = size * w / SAMPLE_WINDOWS_PER_FILE;
        let buffer = job.read_input(input, start, window)?;
        if buffer.is_empty() {
            continue;
        }
        let mut lines: Vec<&[u8]> = buffer.split(|&b| b == b'\n').collect();
        // The first piece may be the tail of a line, the last its head.
        if start > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        if start + buffer.len() as u64 != size || buffer.ends_with(b"\n") {
            lines.pop();
        }
        sample.extend(lines.into_iter().map(<[u8]>::to_vec));
    }
    Ok(())
}

impl App for Sort {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        for line in input.contents.split_inclusive(|&b| b == b'\n') {
            emit.emit(line.strip_suffix(b"\n").unwrap_or(line), b"");
        }
        Ok(())
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        // One line per occurrence.
        while values.next().is_some() {
            out.extend_from_slice(key);
            out.push(b'\n');
        }
        Ok(())
    }

    fn has_partitioner(&self) -> bool {
        true
    }

    fn partition(&self, key: &[u8], partitions: u32) -> u32 {
        let r = self.split_points.partition_point(|point| point.as_slice() <= key) as u32;
        // Split points were made for the job's reduce count; stay in range anyway.
        r.min(partitions - 1)
    }

    fn output_format(&self) -> OutputFormat {
        OutputFormat::Raw
    }
}

mapreduce::export_app!(Sort, Sort::new);

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn job(dir: &Path, files: &[&str], reduces: u32) -> JobContext {
        let inputs = files
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let path = dir.join(format!("in-{i}"));
                std::fs::write(&path, text).unwrap();
                (format!("in-{i}"), path)
            })
            .collect();
        JobContext { inputs, reduces, ..JobContext::default() }
    }

    #[test]
    fn partitions_are_ordered_ranges_and_agree_between_instances() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..5000).map(|i| format!("line {:05}\n", (i * 7919) % 5000)).collect();
        let job = job(dir.path(), &[&text, "zebra\napple\n"], 4);
        let (a, b) = (Sort::new(&job).unwrap(), Sort::new(&job).unwrap());
        assert_eq!(a.split_points, b.split_points, "every worker must choose the same split points");
        assert_eq!(a.split_points.len(), 3);
        let mut keys: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
        keys.sort();
        let partitions: Vec<u32> = keys.iter().map(|k| a.partition(k, 4)).collect();
        assert!(partitions.windows(2).all(|w| w[0] <= w[1]), "sorted keys must map to non-decreasing partitions");
        assert_eq!(partitions.first(), Some(&0));
        assert_eq!(partitions.last(), Some(&3));
        // Roughly even: every partition gets a fair share of the sample.
        for r in 0..4 {
            let n = partitions.iter().filter(|&&p| p == r).count();
            assert!((800..1700).contains(&n), "partition {r} has {n} of 5000");
        }
    }

    #[test]
    fn one_reduce_or_no_data_needs_no_split_points() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Sort::new(&job(dir.path(), &["b\na\n"], 1)).unwrap().split_points.is_empty());
        let empty = Sort::new(&job(dir.path(), &["", ""], 3)).unwrap();
        assert_eq!(empty.partition(b"anything", 3), 0);
    }
}
