//! Input files mapped into memory for map tasks, safe against a file that
//! shrinks while it is mapped.
//!
//! Reading a split with `read(2)` copies every byte from the page cache into
//! a buffer, and then the map reads the buffer again: on a word count that
//! copy was an eighth of the job. A mapping lets the map read the page cache
//! itself. Its one hazard is a file truncated while mapped: touching a page
//! past the new end raises `SIGBUS`, which would kill the worker. So while a
//! mapping is alive it is registered here, and a `SIGBUS` handler turns a
//! fault inside a registered mapping into zero-filled pages and marks the
//! mapping [`changed`](MappedInput::changed): the map task finishes reading
//! zeros, sees the mark, and fails with a clear error, and the master
//! re-runs it from the file as it now is. A fault anywhere else is passed
//! on to the handler that was there before (Rust's own, for stack
//! overflows) or ends the process as `SIGBUS` would have.

use std::fs::File;

/// What a mapping's offset in its file must be a multiple of: a multiple of
/// every page size Linux uses for file mappings.
pub const ALIGNMENT: u64 = 64 * 1024;

/// A part of a file's bytes, mapped read-only; unmapped on drop.
pub struct MappedInput {
    #[cfg(target_os = "linux")]
    mapping: linux::Mapping,
}

impl MappedInput {
    /// Maps `len` bytes of `file` from `offset`, a multiple of
    /// [`ALIGNMENT`]. `None` if that cannot be mapped (not a regular file,
    /// `len` is 0, too many mappings alive, or not Linux): read it instead.
    pub fn open(file: &File, offset: u64, len: u64) -> Option<MappedInput> {
        debug_assert_eq!(offset % ALIGNMENT, 0);
        #[cfg(target_os = "linux")]
        {
            let len = usize::try_from(len).ok().filter(|&len| len > 0)?;
            let offset = libc::off_t::try_from(offset).ok()?;
            linux::Mapping::new(file, offset, len).map(|mapping| MappedInput { mapping })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (file, offset, len);
            None
        }
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        #[cfg(target_os = "linux")]
        return self.mapping.bytes();
        #[cfg(not(target_os = "linux"))]
        unreachable!("no mapping is made off Linux")
    }

    /// True if the file shrank under the mapping and pages past its new end
    /// were read (as zeros): what was read is not the file.
    pub fn changed(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.mapping.changed();
        #[cfg(not(target_os = "linux"))]
        unreachable!("no mapping is made off Linux")
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Once;

    /// Mappings alive at once (one per task slot is the need); past this
    /// many, inputs are read instead.
    const SLOTS: usize = 64;

    /// A registered mapping, as the signal handler sees it: plain atomics,
    /// since a handler may not take locks.
    struct Slot {
        /// Claimed by a live mapping.
        used: AtomicBool,
        /// The mapping's address range; `start` 0 while it is being set up.
        start: AtomicUsize,
        len: AtomicUsize,
        /// A fault in the range was repaired with zero pages.
        changed: AtomicBool,
    }

    static REGISTRY: [Slot; SLOTS] =
        [const { Slot { used: AtomicBool::new(false), start: AtomicUsize::new(0), len: AtomicUsize::new(0), changed: AtomicBool::new(false) } };
            SLOTS];

    /// The `SIGBUS` disposition before ours, to pass other faults on to.
    static mut PREVIOUS: Option<libc::sigaction> = None;
    static INSTALL: Once = Once::new();

    pub(super) struct Mapping {
        start: *mut libc::c_void,
        len: usize,
        slot: &'static Slot,
    }

    // SAFETY: `Mapping` is not `Send` only because of its raw `start`
    // pointer. The mapping is read-only memory that this value alone owns
    // (no other value unmaps it), and `mmap`/`munmap` have no thread
    // affinity, so it may be unmapped by `drop` on any thread; `slot` is a
    // `&'static` of atomics, which is `Send`.
    unsafe impl Send for Mapping {}
    // SAFETY: through `&Mapping` one can only read the mapping (`bytes`:
    // a `&[u8]` of read-only pages, which no one writes while it lives; the
    // SIGBUS handler only swaps in zero pages, under the same protection)
    // and load the slot's atomics (`changed`). Both are safe to do from
    // several threads at once.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        pub(super) fn new(file: &File, offset: libc::off_t, len: usize) -> Option<Mapping> {
            install_handler()?;
            let slot = REGISTRY.iter().find(|s| s.used.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
            // SAFETY: a fresh read-only private mapping of an open file; the
            // kernel picks the address. MAP_POPULATE maps the pages up front
            // (one call instead of a fault per page).
            let start =
                unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_POPULATE, file.as_raw_fd(), offset) };
            if start == libc::MAP_FAILED {
                slot.used.store(false, Ordering::Release);
                return None;
            }
            slot.changed.store(false, Ordering::Relaxed);
            slot.len.store(len, Ordering::Relaxed);
            slot.start.store(start as usize, Ordering::Release);
            Some(Mapping { start, len, slot })
        }

        pub(super) fn bytes(&self) -> &[u8] {
            // SAFETY: `len` readable bytes at `start` for as long as `self`
            // lives; pages the file no longer backs read as zeros (see the
            // handler) instead of faulting.
            unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) }
        }

        pub(super) fn changed(&self) -> bool {
            self.slot.changed.load(Ordering::Acquire)
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            self.slot.start.store(0, Ordering::Release);
            // SAFETY: unmaps exactly the mapping this value owns; no borrow
            // of `bytes()` outlives `self`.
            unsafe { libc::munmap(self.start, self.len) };
            self.slot.used.store(false, Ordering::Release);
        }
    }

    /// Installs the `SIGBUS` handler once; `None` if that failed.
    fn install_handler() -> Option<()> {
        static INSTALLED: AtomicBool = AtomicBool::new(false);
        INSTALL.call_once(|| {
            // SAFETY: sigaction with zeroed, then filled, structs. The
            // previous disposition is read and stored before ours is
            // installed, so the handler never reads PREVIOUS while it is
            // being written.
            unsafe {
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                    return;
                }
                PREVIOUS = Some(previous);
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigbus as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0 {
                    INSTALLED.store(true, Ordering::Release);
                }
            }
        });
        INSTALLED.load(Ordering::Acquire).then_some(())
    }

    /// The `SIGBUS` handler: only async-signal-safe work (atomics, `mmap`).
    extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let address = unsafe { (*info).si_addr() } as usize;
        for slot in &REGISTRY {
            let start = slot.start.load(Ordering::Acquire);
            let len = slot.len.load(Ordering::Relaxed);
            if start != 0 && (start..start + len).contains(&address) {
                // Zero pages from the faulting page to the mapping's end:
                // every page past the file's new end would fault too.
                let page = address & !(page_size() - 1);
                // SAFETY: MAP_FIXED replaces pages inside our own mapping,
                // which its owner only reads.
                let replaced = unsafe {
                    libc::mmap(
                        page as *mut libc::c_void,
                        start + len - page,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if replaced != libc::MAP_FAILED {
                    slot.changed.store(true, Ordering::Release);
                    return; // the read is retried and now sees zeros
                }
            }
        }
        pass_on(signal, info, context);
    }

    /// Hands a fault that is not ours to the previous handler, or restores
    /// the default action so that the retried access ends the process.
    fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: PREVIOUS was written once, before the handler could run.
        let previous = unsafe { (*std::ptr::addr_of!(PREVIOUS)).as_ref() };
        match previous {
            Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
                if p.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: the previous handler was installed with this signature.
                    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(p.sa_sigaction) };
                    handler(signal, info, context);
                } else {
                    // SAFETY: as above, for a plain handler.
                    let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(p.sa_sigaction) };
                    handler(signal);
                }
            }
            _ => {
                // SAFETY: resetting a disposition is async-signal-safe.
                unsafe { libc::signal(signal, libc::SIG_DFL) };
            }
        }
    }

    fn page_size() -> usize {
        // SAFETY: sysconf is async-signal-safe and has no preconditions.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::io::Write;

        #[test]
        fn a_file_truncated_under_its_mapping_reads_as_zeros_and_is_marked_changed() {
            let mut file = tempfile::tempfile().unwrap();
            let data: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
            file.write_all(&data).unwrap();
            let mapping = Mapping::new(&file, 0, data.len()).expect("mapped");
            assert_eq!(mapping.bytes(), &data[..]);
            assert!(!mapping.changed());
            file.set_len(10_000).unwrap();
            // Past the new end: without the handler this read dies of SIGBUS.
            let bytes = mapping.bytes();
            let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
            assert!(mapping.changed());
            assert_eq!(&bytes[..10_000], &data[..10_000], "pages the file still backs are intact");
            assert!(sum < data.iter().map(|&b| u64::from(b)).sum::<u64>());
            let slot: &'static Slot = mapping.slot;
            drop(mapping);
            assert!(!slot.used.load(Ordering::Acquire), "the slot is released");
        }

        #[test]
        fn an_untouched_mapping_is_not_changed() {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(b"hello world\n").unwrap();
            let mapping = Mapping::new(&file, 0, 12).expect("mapped");
            assert_eq!(mapping.bytes(), b"hello world\n");
            assert!(!mapping.changed());
        }
    }
}
