//! The app's own counters: [`increment`] from `map`, `reduce` or
//! `combine`, and [`collect`] to see them in an app's unit test.
//!
//! [`increment`] works through the plugin boundary: while the host is inside
//! a call into the plugin, the plugin side remembers the call's
//! [`HostCalls`] in a thread-local, and `increment`
//! hands the name and amount to the host's `add_counter` callback. Outside
//! such a call (an app's own unit test calling `map` directly) it does
//! nothing, unless the caller wraps the code in [`collect`]. The host keeps
//! an attempt's counts in a [`UserCounters`].

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::abi::{with_current_host, HostCallScope, HostCalls, RawBytes};

/// Adds `delta` to the app's counter `name` for the task being run.
///
/// Cheap (a thread-local read and a call into the host), but not free: in a
/// hot loop, count locally and add the total once per `map` call.
///
/// ```
/// # use mapreduce_app::{counters, text, MapInput};
/// # fn map(input: &MapInput<'_>) {
/// let mut words = 0;
/// text::for_each_word(input.contents, |_| words += 1);
/// counters::increment("words", words);
/// # }
/// ```
pub fn increment(name: &str, delta: u64) {
    // SAFETY: `with_current_host` hands out the `HostCalls` of the plugin
    // call running on this thread, live for that call; its `add_counter`
    // is called with its own `ctx`, as the ABI requires, and `name` is a
    // borrowed `&str` that outlives the call.
    with_current_host(|host| unsafe { (host.add_counter)(host.ctx, RawBytes::new(name.as_bytes()), delta) });
}

/// Runs `f` with [`increment`] recording into a map that is returned with
/// `f`'s result: for testing an app's counters without a worker.
pub fn collect<R>(f: impl FnOnce() -> R) -> (R, BTreeMap<String, u64>) {
    let counters = UserCounters::default();
    let host = counting_host_calls(&counters);
    let result = {
        let _scope = HostCallScope::enter(&host);
        f()
    };
    (result, counters.take())
}

/// Host calls that only count: `add_counter` adds to `counters`, every
/// other callback does nothing. For [`collect`].
fn counting_host_calls(counters: &UserCounters) -> HostCalls {
    unsafe extern "C" fn ignore_pair(_: *mut c_void, _: RawBytes, _: RawBytes) {}
    unsafe extern "C" fn no_value(_: *mut c_void, _: *mut RawBytes) -> bool {
        false
    }
    unsafe extern "C" fn ignore_bytes(_: *mut c_void, _: RawBytes) {}
    unsafe extern "C" fn no_inputs(_: *mut c_void, _: u32, _: u64, _: u64, _: *mut RawBytes) -> u32 {
        crate::abi::READ_UNSERVED
    }
    HostCalls {
        ctx: counters as *const UserCounters as *mut c_void,
        emit: ignore_pair,
        next_value: no_value,
        write_output: ignore_bytes,
        fail: ignore_bytes,
        add_counter: add_to_user_counters,
        read_input: no_inputs,
    }
}

/// The app's counters of one attempt, on the host side. Shared by the map
/// call and the combiner calls of the shuffle, hence the lock (never
/// contended: one attempt runs on one thread).
#[derive(Debug, Default)]
pub struct UserCounters {
    counts: Mutex<BTreeMap<String, u64>>,
    /// Ticked by every update: an app that counts shows it is alive.
    progress: Option<Arc<AtomicU64>>,
}

impl UserCounters {
    /// Counters whose every update also adds one to `progress` (the
    /// attempt's units of work, which only its own thread writes).
    pub fn reporting_to(progress: Arc<AtomicU64>) -> UserCounters {
        UserCounters { counts: Mutex::default(), progress: Some(progress) }
    }

    /// Adds `delta` to `name`.
    pub fn add(&self, name: &str, delta: u64) {
        if let Some(progress) = &self.progress {
            progress.store(progress.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(name) {
            Some(count) => *count = count.saturating_add(delta),
            None => {
                counts.insert(name.to_owned(), delta);
            }
        }
    }

    /// The counts so far, leaving none.
    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The host's `add_counter` callback when `ctx` points at a [`UserCounters`].
///
/// # Safety
/// `ctx` must point at a live `UserCounters`, and `name` must describe
/// `name.len` readable bytes, both for the duration of the call (as the
/// [`HostCalls`] contract promises its callbacks).
pub unsafe extern "C" fn add_to_user_counters(ctx: *mut c_void, name: RawBytes, delta: u64) {
    // SAFETY: the caller guarantees `ctx` points at a live `UserCounters`
    // (see `# Safety`); `UserCounters` is `Sync` (a mutex inside), so a
    // shared reference is sound even if other threads hold one too.
    let counters = unsafe { &*(ctx as *const UserCounters) };
    // SAFETY: the caller guarantees `name` is readable for this call, and
    // the borrow ends before the function returns.
    let name = unsafe { name.as_slice() };
    counters.add(&String::from_utf8_lossy(name), delta);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increment_records_only_inside_a_host_call() {
        increment("outside", 1);
        let ((), counts) = collect(|| {
            increment("words", 3);
            increment("words", 4);
            let ((), inner) = collect(|| increment("nested", 1));
            assert_eq!(inner, BTreeMap::from([("nested".into(), 1)]));
            increment("lines", 1);
        });
        assert_eq!(counts, BTreeMap::from([("lines".into(), 1), ("words".into(), 7)]));
    }
}
