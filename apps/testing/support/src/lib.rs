//! Helpers shared by the MIT lab's test apps (`apps/testing/*`), with the
//! lab's semantics. This crate is linked into those plugins; it is not one.

use std::path::Path;
use std::time::Duration;

use mapreduce::{AppResult, Emitter, MapInput, Values};

/// The lab's `maybeCrash`: a third of the time exit the whole worker
/// process at once, a third of the time stall for up to 10 s, otherwise
/// return. The stall is what makes the coordinator's task timeout matter.
pub fn maybe_crash() {
    let roll = fastrand::u32(0..1000);
    if roll < 330 {
        std::process::exit(1);
    } else if roll < 660 {
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..10_000)));
    }
}

/// The map of the lab's `crash` and `nocrash` apps: four facts about the input.
pub fn crash_map(input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
    emit.emit("a", input.filename);
    emit.emit("b", input.filename.len().to_string());
    emit.emit("c", input.contents.len().to_string());
    emit.emit("d", "xyzzy");
    Ok(())
}

/// The values sorted and joined with spaces (deterministic whatever order
/// the values arrived in).
pub fn sorted_joined(values: &mut Values<'_>, out: &mut Vec<u8>) {
    let mut all = values.to_vecs();
    all.sort();
    out.extend_from_slice(&all.join(&b' '));
}

/// The lab's `nparallel`: announce this process in the current directory as
/// running `phase`, count the announced processes that are alive (this one
/// included), linger a second so overlapping tasks can see each other, and
/// withdraw. Liveness is checked through `/proc/<pid>` (Linux).
pub fn nparallel(phase: &str) -> std::io::Result<usize> {
    let prefix = format!("mr-worker-{phase}-");
    let mine = format!("{prefix}{}", std::process::id());
    std::fs::write(&mine, "x")?;
    let mut alive = 0;
    for entry in std::fs::read_dir(".")? {
        let name = entry?.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if Path::new(&format!("/proc/{pid}")).exists() {
                alive += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    std::fs::remove_file(&mine)?;
    Ok(alive)
}
