//! The plugin boundary: a versioned C ABI between `mr-worker` and an app.
//!
//! The worker and a plugin may be built by different compilers, so nothing
//! Rust-specific crosses the boundary: only `#[repr(C)]` structs, byte
//! slices as pointer + length, and `extern "C"` functions. A plugin exports
//! two symbols:
//!
//! - [`VERSION_SYMBOL`]: `extern "C" fn() -> u32`, the ABI version it speaks.
//!   The loader (the host's `plugin` module) reads it first and refuses any version but
//!   [`ABI_VERSION`], before touching anything else.
//! - [`VTABLE_SYMBOL`]: `extern "C" fn() -> *const PluginVTable`.
//!
//! Calls go host → plugin through the vtable; the plugin calls back into the
//! host (to emit a pair, pull the next value, write output, report an error)
//! through a [`HostCalls`] the host passes in. The host calls `init` once,
//! with the job's context, before anything else; the plugin creates the app
//! instance then and reports its [capabilities](CAP_COMBINER). A panic in app code is caught
//! on the plugin side (`call_app`) and returned as [`Status::Panicked`] with
//! its message, because unwinding across `extern "C"` would abort the worker.
//!
//! Bump [`ABI_VERSION`] whenever any type or signature here changes.

use std::cell::Cell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::app::{App, AppError, AppResult, Emitter, JobContext, MapInput, OutputFormat, Params, TaskInfo, TaskKind, ValueSource, Values};

/// The ABI version this build of the framework speaks.
/// Version 2 added `init` (job parameters), `combine`, `partition` and the
/// map input's offset; version 3 added counters (`HostCalls::add_counter`);
/// version 4 added the task hooks (`start_task`, `finish_map`, `finish_reduce`);
/// version 5 added reading the job's inputs through the host
/// (`HostCalls::read_input`, for [`JobContext::read_input`]).
pub const ABI_VERSION: u32 = 5;

/// Capability bit: the app has a combiner.
pub const CAP_COMBINER: u32 = 1;
/// Capability bit: the app partitions keys itself.
pub const CAP_PARTITIONER: u32 = 2;
/// Capability bit: the app writes its output lines itself ([`OutputFormat::Raw`]).
pub const CAP_RAW_OUTPUT: u32 = 4;
/// Capability bit: output lines are `<key>\t<value>` ([`OutputFormat::KeyTabValue`]).
/// A worker that does not know this bit writes `<key> <value>`.
pub const CAP_TAB_SEPARATED: u32 = 8;

/// `read_input`: the bytes are in `*out`.
pub const READ_OK: u32 = 0;
/// `read_input`: `*out` holds why the bytes could not be read.
pub const READ_FAILED: u32 = 1;
/// `read_input`: this host does not serve inputs.
pub const READ_UNSERVED: u32 = 2;

/// What `partition` returns when the app's partitioner panicked.
pub const PARTITION_FAILED: u32 = u32::MAX;

/// Name of the exported `extern "C" fn() -> u32` returning the ABI version.
pub const VERSION_SYMBOL: &[u8] = b"mapreduce_plugin_abi_version";

/// Name of the exported `extern "C" fn() -> *const PluginVTable`.
pub const VTABLE_SYMBOL: &[u8] = b"mapreduce_plugin_vtable";

/// A borrowed byte slice crossing the boundary. Valid only for the duration
/// of the call that passes it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawBytes {
    /// Start of the bytes; may dangle when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl RawBytes {
    /// Borrows `bytes` for a call.
    pub fn new(bytes: &[u8]) -> Self {
        RawBytes { ptr: bytes.as_ptr(), len: bytes.len() }
    }

    /// The bytes, borrowed for `'a`.
    ///
    /// # Safety
    /// Unless `len` is 0, `self` must describe `len` initialised bytes,
    /// readable and not written to for all of `'a`.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            &[]
        } else {
            // SAFETY: `len` is not 0 here, so the caller guarantees that
            // `ptr` (hence non-null and, for `u8`, aligned) starts `len`
            // initialised bytes that stay unchanged for `'a`. They come
            // from one Rust slice on the other side, so `len` is at most
            // `isize::MAX`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// How a map or reduce call ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The app returned an error; its message was passed to `HostCalls::fail`.
    Failed = 1,
    /// The app panicked; the panic message was passed to `HostCalls::fail`.
    Panicked = 2,
}

/// Callbacks into the host, all taking the host's opaque `ctx`. A callback a
/// given call does not use (e.g. `next_value` during map) is still valid.
#[repr(C)]
pub struct HostCalls {
    /// Host state for this call.
    pub ctx: *mut c_void,
    /// Map: emit one intermediate pair.
    pub emit: unsafe extern "C" fn(ctx: *mut c_void, key: RawBytes, value: RawBytes),
    /// Reduce: store the next value of the current key in `*out` and return
    /// true, or return false when there are no more.
    pub next_value: unsafe extern "C" fn(ctx: *mut c_void, out: *mut RawBytes) -> bool,
    /// Reduce: append bytes to the output value of the current key.
    pub write_output: unsafe extern "C" fn(ctx: *mut c_void, bytes: RawBytes),
    /// Record the message of a failed call.
    pub fail: unsafe extern "C" fn(ctx: *mut c_void, message: RawBytes),
    /// Add `delta` to the app's counter `name` ([`crate::counters::increment`]).
    pub add_counter: unsafe extern "C" fn(ctx: *mut c_void, name: RawBytes, delta: u64),
    /// Read up to `len` bytes at `offset` of the job's input number `input`
    /// ([`JobContext::read_input`]): [`READ_OK`] with the bytes in `*out`,
    /// [`READ_FAILED`] with an error message there (valid until the next
    /// host call), or [`READ_UNSERVED`] if this host does not serve inputs
    /// (the app reads the file itself).
    pub read_input: unsafe extern "C" fn(ctx: *mut c_void, input: u32, offset: u64, len: u64, out: *mut RawBytes) -> u32,
}

/// The functions a plugin provides.
#[repr(C)]
pub struct PluginVTable {
    /// Repeats the ABI version, so a vtable can be checked on its own.
    pub abi_version: u32,
    /// The app's name (its Rust type name), for messages.
    pub name: RawBytes,
    /// Creates the app for a job from `job` (see [`encode_job`]) and stores
    /// its capability bits in `*capabilities`. Later calls keep the first app.
    pub init: unsafe extern "C" fn(host: *const HostCalls, job: RawBytes, capabilities: *mut u32) -> Status,
    /// Runs `App::map` on one input: `contents` starts at byte `offset` of the file.
    pub map: unsafe extern "C" fn(host: *const HostCalls, filename: RawBytes, contents: RawBytes, offset: u64) -> Status,
    /// Runs `App::reduce` on one key, pulling values with `next_value` and
    /// writing the output value with `write_output` (only on success).
    pub reduce: unsafe extern "C" fn(host: *const HostCalls, key: RawBytes) -> Status,
    /// Runs `App::combine` on one key, like `reduce`.
    pub combine: unsafe extern "C" fn(host: *const HostCalls, key: RawBytes) -> Status,
    /// Runs `App::partition`; returns [`PARTITION_FAILED`] if it panicked.
    pub partition: unsafe extern "C" fn(key: RawBytes, partitions: u32) -> u32,
    /// Runs `App::start_task` for a map (`kind` 0) or reduce (`kind` 1)
    /// task attempt of task `index`.
    pub start_task: unsafe extern "C" fn(host: *const HostCalls, kind: u32, index: u32) -> Status,
    /// Runs `App::finish_map`, emitting with `emit`.
    pub finish_map: unsafe extern "C" fn(host: *const HostCalls) -> Status,
    /// Runs `App::finish_reduce`, writing with `write_output` (only on success).
    pub finish_reduce: unsafe extern "C" fn(host: *const HostCalls) -> Status,
}

/// `kind` of [`PluginVTable::start_task`] for a map task.
pub const TASK_MAP: u32 = 0;
/// `kind` of [`PluginVTable::start_task`] for a reduce task.
pub const TASK_REDUCE: u32 = 1;

/// Exports an app type as a plugin. Use it once, at the root of a `cdylib`
/// crate:
///
/// - `export_app!(MyApp)` makes the app with `MyApp::default()`;
/// - `export_app!(MyApp, MyApp::new)` makes it with a constructor
///   `fn(&JobContext) -> Result<MyApp, AppError>`, which sees the job's
///   parameters, inputs and number of reduces, and may refuse them.
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        $crate::export_app!($app, |_: &$crate::JobContext| -> ::std::result::Result<$app, $crate::AppError> {
            ::std::result::Result::Ok(<$app as ::std::default::Default>::default())
        });
    };
    ($app:ty, $constructor:expr) => {
        static __MAPREDUCE_APP: ::std::sync::OnceLock<$app> = ::std::sync::OnceLock::new();

        #[no_mangle]
        pub extern "C" fn mapreduce_plugin_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        #[no_mangle]
        pub extern "C" fn mapreduce_plugin_vtable() -> *const $crate::abi::PluginVTable {
            use $crate::abi::{HostCalls, RawBytes, Status};
            unsafe extern "C" fn init(host: *const HostCalls, job: RawBytes, capabilities: *mut u32) -> Status {
                let constructor: fn(&$crate::JobContext) -> ::std::result::Result<$app, $crate::AppError> = $constructor;
                // SAFETY: the host calls this only through the vtable, with
                // the arguments `PluginVTable::init` documents; they are
                // exactly what `plugin_init` requires.
                unsafe { $crate::abi::plugin_init(&__MAPREDUCE_APP, constructor, host, job, capabilities) }
            }
            unsafe extern "C" fn map(host: *const HostCalls, filename: RawBytes, contents: RawBytes, offset: u64) -> Status {
                // SAFETY: the host calls this only through the vtable, with
                // the arguments `PluginVTable::map` documents; they are
                // exactly what `plugin_map` requires.
                unsafe { $crate::abi::plugin_map(&__MAPREDUCE_APP, host, filename, contents, offset) }
            }
            unsafe extern "C" fn reduce(host: *const HostCalls, key: RawBytes) -> Status {
                // SAFETY: the host calls this only through the vtable, with
                // the arguments `PluginVTable::reduce` documents; they are
                // exactly what `plugin_reduce` requires.
                unsafe { $crate::abi::plugin_reduce(&__MAPREDUCE_APP, host, key, false) }
            }
            unsafe extern "C" fn combine(host: *const HostCalls, key: RawBytes) -> Status {
                // SAFETY: the host calls this only through the vtable, with
                // the arguments `PluginVTable::combine` documents; they are
                // exactly what `plugin_reduce` requires.
                unsafe { $crate::abi::plugin_reduce(&__MAPREDUCE_APP, host, key, true) }
            }
            unsafe extern "C" fn partition(key: RawBytes, partitions: u32) -> u32 {
                // SAFETY: the host calls this only through the vtable, with
                // the arguments `PluginVTable::partition` documents; they are
                // exactly what `plugin_partition` requires.
                unsafe { $crate::abi::plugin_partition(&__MAPREDUCE_APP, key, partitions) }
            }
            unsafe extern "C" fn start_task(host: *const HostCalls, kind: u32, index: u32) -> Status {
                // SAFETY: the host calls this only through the vtable, with
                // the arguments `PluginVTable::start_task` documents; they are
                // exactly what `plugin_start_task` requires.
                unsafe { $crate::abi::plugin_start_task(&__MAPREDUCE_APP, host, kind, index) }
            }
            unsafe extern "C" fn finish_map(host: *const HostCalls) -> Status {
                // SAFETY: the host calls this only through the vtable, with
                // the arguments `PluginVTable::finish_map` documents; they are
                // exactly what `plugin_finish_map` requires.
                unsafe { $crate::abi::plugin_finish_map(&__MAPREDUCE_APP, host) }
            }
            unsafe extern "C" fn finish_reduce(host: *const HostCalls) -> Status {
                // SAFETY: the host calls this only through the vtable, with
                // the arguments `PluginVTable::finish_reduce` documents; they are
                // exactly what `plugin_finish_reduce` requires.
                unsafe { $crate::abi::plugin_finish_reduce(&__MAPREDUCE_APP, host) }
            }
            static NAME: &str = stringify!($app);
            static VTABLE: $crate::abi::PluginVTable = $crate::abi::PluginVTable {
                abi_version: $crate::abi::ABI_VERSION,
                name: RawBytes { ptr: NAME.as_ptr(), len: NAME.len() },
                init,
                map,
                reduce,
                combine,
                partition,
                start_task,
                finish_map,
                finish_reduce,
            };
            &VTABLE
        }
    };
}

// SAFETY: `RawBytes` is a pointer and a length, with no interior
// mutability; sharing one between threads only copies those two words.
// Reading the bytes takes the `unsafe` `as_slice`, whose caller answers for
// their validity on its own thread. The one `RawBytes` that is actually
// shared, the `static` vtable's `name`, points at a `'static str`, which is
// immutable and `Sync`. (Needed because raw pointers are not `Sync`, and a
// `static` must be.)
unsafe impl Sync for RawBytes {}

/// Plugin side of `init`: makes the app (once) and reports what it can do.
///
/// # Safety
/// Called only by the host through the vtable. `host` must point at a
/// valid [`HostCalls`] whose callbacks accept its `ctx`, all live for the
/// whole call; `job` must describe readable bytes for the call
/// ([`RawBytes::as_slice`]); `capabilities` must be valid for a write of a
/// `u32`.
#[doc(hidden)]
pub unsafe fn plugin_init<A: App>(
    cell: &OnceLock<A>,
    constructor: fn(&JobContext) -> Result<A, AppError>,
    host: *const HostCalls,
    job: RawBytes,
    capabilities: *mut u32,
) -> Status {
    // SAFETY: the caller guarantees `host` points at a valid `HostCalls`
    // live for the whole call, which outlives this borrow.
    let host = unsafe { &*host };
    // The constructor may read inputs through the host.
    let _scope = HostCallScope::enter(host);
    call_app(host, || {
        let app = match cell.get() {
            Some(app) => app,
            None => {
                // SAFETY: the caller guarantees `job` is readable for the
                // call; `decode_job` copies what it keeps.
                let job = decode_job(unsafe { job.as_slice() }).ok_or("the worker sent a malformed job description")?;
                let app = constructor(&job)?;
                // A concurrent init of the same job made an equal app; keep either.
                let _ = cell.set(app);
                cell.get().expect("just set")
            }
        };
        let mut caps = 0;
        if app.has_combiner() {
            caps |= CAP_COMBINER;
        }
        if app.has_partitioner() {
            caps |= CAP_PARTITIONER;
        }
        caps |= match app.output_format() {
            OutputFormat::KeyValue => 0,
            OutputFormat::KeyTabValue => CAP_TAB_SEPARATED,
            OutputFormat::Raw => CAP_RAW_OUTPUT,
        };
        // SAFETY: the caller guarantees `capabilities` is valid for a
        // write of a `u32`.
        unsafe { *capabilities = caps };
        Ok(())
    })
}

fn initialised<A>(cell: &OnceLock<A>) -> Result<&A, AppError> {
    cell.get().ok_or_else(|| "the app was called before init".into())
}

/// Plugin side of `map`: decodes the call and runs the app, catching panics.
///
/// # Safety
/// Called only by the host through the vtable. `host` must point at a
/// valid [`HostCalls`] whose callbacks accept its `ctx`, all live for the
/// whole call; `filename` and `contents` must describe readable bytes for
/// the call ([`RawBytes::as_slice`]).
#[doc(hidden)]
pub unsafe fn plugin_map<A: App>(cell: &OnceLock<A>, host: *const HostCalls, filename: RawBytes, contents: RawBytes, offset: u64) -> Status {
    // SAFETY: the caller guarantees `host` points at a valid `HostCalls`
    // live for the whole call, which outlives this borrow.
    let host = unsafe { &*host };
    // SAFETY: the caller guarantees both slices are readable for the call;
    // neither borrow outlives it (the app gets `&MapInput` only inside
    // `call_app` below).
    let (filename, contents) = unsafe { (filename.as_slice(), contents.as_slice()) };
    let filename = String::from_utf8_lossy(filename);
    let input = MapInput { filename: &filename, contents, offset };
    let mut sink = |key: &[u8], value: &[u8]| {
        // SAFETY: `host` is valid for the whole call (see `# Safety`) and
        // `emit` gets its own `ctx`; `key` and `value` are live slices for
        // the duration of `emit`, which copies what it keeps.
        unsafe { (host.emit)(host.ctx, RawBytes::new(key), RawBytes::new(value)) }
    };
    let _counters = HostCallScope::enter(host);
    call_app(host, || initialised(cell)?.map(&input, &mut Emitter::new(&mut sink)))
}

/// Plugin side of `reduce` and `combine`: decodes the call and runs the
/// app, catching panics.
///
/// # Safety
/// Called only by the host through the vtable. `host` must point at a
/// valid [`HostCalls`] whose callbacks accept its `ctx`, all live for the
/// whole call; `key` must describe readable bytes for the call
/// ([`RawBytes::as_slice`]).
#[doc(hidden)]
pub unsafe fn plugin_reduce<A: App>(cell: &OnceLock<A>, host: *const HostCalls, key: RawBytes, combine: bool) -> Status {
    // SAFETY: the caller guarantees `host` points at a valid `HostCalls`
    // live for the whole call, which outlives this borrow.
    let host = unsafe { &*host };
    // SAFETY: the caller guarantees `key` is readable for the call, and the
    // borrow ends with it.
    let key = unsafe { key.as_slice() };
    let mut source = HostValues { host };
    let mut value = Vec::new();
    let _counters = HostCallScope::enter(host);
    let status = call_app(host, || {
        let app = initialised(cell)?;
        let mut values = Values::new(&mut source);
        if combine {
            app.combine(key, &mut values, &mut value)
        } else {
            app.reduce(key, &mut values, &mut value)
        }
    });
    if status == Status::Ok {
        // The value is copied into host memory: each side frees only what it
        // allocated.
        // SAFETY: `host` is valid for the whole call (see `# Safety`) and
        // `write_output` gets its own `ctx`; `value` lives past the call.
        unsafe { (host.write_output)(host.ctx, RawBytes::new(&value)) };
    }
    status
}

/// Plugin side of `start_task`.
///
/// # Safety
/// Called only by the host through the vtable. `host` must point at a
/// valid [`HostCalls`] whose callbacks accept its `ctx`, all live for the
/// whole call.
#[doc(hidden)]
pub unsafe fn plugin_start_task<A: App>(cell: &OnceLock<A>, host: *const HostCalls, kind: u32, index: u32) -> Status {
    // SAFETY: the caller guarantees `host` points at a valid `HostCalls`
    // live for the whole call, which outlives this borrow.
    let host = unsafe { &*host };
    let kind = if kind == TASK_MAP { TaskKind::Map } else { TaskKind::Reduce };
    let _counters = HostCallScope::enter(host);
    call_app(host, || initialised(cell)?.start_task(TaskInfo { kind, index }))
}

/// Plugin side of `finish_map`.
///
/// # Safety
/// Called only by the host through the vtable. `host` must point at a
/// valid [`HostCalls`] whose callbacks accept its `ctx`, all live for the
/// whole call.
#[doc(hidden)]
pub unsafe fn plugin_finish_map<A: App>(cell: &OnceLock<A>, host: *const HostCalls) -> Status {
    // SAFETY: the caller guarantees `host` points at a valid `HostCalls`
    // live for the whole call, which outlives this borrow.
    let host = unsafe { &*host };
    let mut sink = |key: &[u8], value: &[u8]| {
        // SAFETY: `host` is valid for the whole call (see `# Safety`) and
        // `emit` gets its own `ctx`; `key` and `value` are live slices for
        // the duration of `emit`, which copies what it keeps.
        unsafe { (host.emit)(host.ctx, RawBytes::new(key), RawBytes::new(value)) }
    };
    let _counters = HostCallScope::enter(host);
    call_app(host, || initialised(cell)?.finish_map(&mut Emitter::new(&mut sink)))
}

/// Plugin side of `finish_reduce`.
///
/// # Safety
/// Called only by the host through the vtable. `host` must point at a
/// valid [`HostCalls`] whose callbacks accept its `ctx`, all live for the
/// whole call.
#[doc(hidden)]
pub unsafe fn plugin_finish_reduce<A: App>(cell: &OnceLock<A>, host: *const HostCalls) -> Status {
    // SAFETY: the caller guarantees `host` points at a valid `HostCalls`
    // live for the whole call, which outlives this borrow.
    let host = unsafe { &*host };
    let mut out = Vec::new();
    let _counters = HostCallScope::enter(host);
    let status = call_app(host, || initialised(cell)?.finish_reduce(&mut out));
    if status == Status::Ok {
        // SAFETY: `host` is valid for the whole call (see `# Safety`) and
        // `write_output` gets its own `ctx`; `out` lives past the call.
        unsafe { (host.write_output)(host.ctx, RawBytes::new(&out)) };
    }
    status
}

/// Plugin side of `partition`.
///
/// # Safety
/// Called only by the host through the vtable; `key` must describe readable
/// bytes for the call ([`RawBytes::as_slice`]).
#[doc(hidden)]
pub unsafe fn plugin_partition<A: App>(cell: &OnceLock<A>, key: RawBytes, partitions: u32) -> u32 {
    let Some(app) = cell.get() else { return PARTITION_FAILED };
    // SAFETY: the caller guarantees `key` is readable for the call, and the
    // borrow ends with it.
    let key = unsafe { key.as_slice() };
    catch_unwind(AssertUnwindSafe(|| app.partition(key, partitions))).unwrap_or(PARTITION_FAILED)
}

/// Pulls values from the host, one call per value.
struct HostValues<'h> {
    host: &'h HostCalls,
}

impl ValueSource for HostValues<'_> {
    fn next_value(&mut self) -> Option<&[u8]> {
        let mut raw = RawBytes::new(&[]);
        // SAFETY: `self.host` is the valid `HostCalls` of the running
        // plugin call and `next_value` gets its own `ctx`; `raw` is a live
        // local to write to. On true the host has stored in `raw` a value it
        // keeps alive and unchanged until it is asked for the next value,
        // and only this `HostValues` asks, which it cannot do while the
        // returned slice borrows it mutably.
        unsafe { (self.host.next_value)(self.host.ctx, &mut raw).then(|| raw.as_slice()) }
    }
}

/// Runs app code, turning an error or a panic into a status plus a message
/// handed to the host, so that nothing unwinds across the boundary.
fn call_app(host: &HostCalls, f: impl FnOnce() -> AppResult) -> Status {
    let (status, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return Status::Ok,
        Ok(Err(e)) => (Status::Failed, e.to_string()),
        Err(payload) => (Status::Panicked, panic_message(payload.as_ref())),
    };
    // SAFETY: `call_app` runs inside a `plugin_*` call, whose caller
    // guarantees `host` and its callbacks are valid for the whole call;
    // `fail` gets its own `ctx`, and `message` outlives the callback, which
    // copies it.
    unsafe { (host.fail)(host.ctx, RawBytes::new(message.as_bytes())) };
    status
}

thread_local! {
    /// The host calls of the plugin call running on this thread, or null.
    static CURRENT_HOST: Cell<*const HostCalls> = const { Cell::new(std::ptr::null()) };
}

/// Makes `host` the host calls of this thread's plugin call (the target of
/// [`crate::counters::increment`]) until dropped
/// (restoring the previous one, so nested calls work).
pub(crate) struct HostCallScope {
    previous: *const HostCalls,
}

impl HostCallScope {
    /// Makes `host` the target until the scope is dropped.
    pub(crate) fn enter(host: &HostCalls) -> HostCallScope {
        HostCallScope { previous: CURRENT_HOST.with(|c| c.replace(host as *const HostCalls)) }
    }
}

impl Drop for HostCallScope {
    fn drop(&mut self) {
        CURRENT_HOST.with(|c| c.set(self.previous));
    }
}

/// Reads bytes of input number `input` through the host of the plugin
/// call running on this thread; `None` outside one.
pub(crate) fn read_input_through_host(input: u32, offset: u64, len: u64) -> Option<Result<Vec<u8>, String>> {
    let mut result = None;
    with_current_host(|host| {
        let mut out = RawBytes::new(&[]);
        // SAFETY: the host's callback fills `out` with bytes that stay valid
        // until its next call; they are copied at once.
        let answer = unsafe { (host.read_input)(host.ctx, input, offset, len, &mut out) };
        // SAFETY: on READ_OK and READ_FAILED the host has stored in `out`
        // bytes valid until its next call; they are copied at once, before
        // any other host call. (On other answers this is not called.)
        let bytes = || unsafe { out.as_slice() }.to_vec();
        result = match answer {
            READ_OK => Some(Ok(bytes())),
            READ_FAILED => Some(Err(String::from_utf8_lossy(&bytes()).into_owned())),
            _ => None,
        };
    });
    result
}

/// Calls `f` with the host calls of the plugin call running on this
/// thread, if there is one.
pub(crate) fn with_current_host(f: impl FnOnce(&HostCalls)) {
    let host = CURRENT_HOST.with(Cell::get);
    // SAFETY: `CURRENT_HOST` is set only for the duration of a host call on
    // this thread (see `HostCallScope`), so the pointer is live during `f`.
    if let Some(host) = unsafe { host.as_ref() } {
        f(host);
    }
}

/// Encodes a job context for `init`: `reduces:u32`, then the params and the
/// inputs as counted lists of length-prefixed byte strings (all integers
/// u32 little-endian). Both sides of the boundary use this module, and the
/// ABI version check guarantees they agree on it.
pub fn encode_job(job: &JobContext) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    let put = |bytes: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    out.extend_from_slice(&job.reduces.to_le_bytes());
    out.extend_from_slice(&(job.params.iter().count() as u32).to_le_bytes());
    for (k, v) in job.params.iter() {
        put(k.as_bytes(), &mut out);
        put(v.as_bytes(), &mut out);
    }
    out.extend_from_slice(&(job.inputs.len() as u32).to_le_bytes());
    for (name, path) in &job.inputs {
        put(name.as_bytes(), &mut out);
        put(path.as_os_str().as_bytes(), &mut out);
    }
    out.extend_from_slice(&(job.input_sizes.len() as u32).to_le_bytes());
    for size in &job.input_sizes {
        out.extend_from_slice(&size.to_le_bytes());
    }
    out
}

/// Decodes what [`encode_job`] wrote; `None` if it is malformed.
pub fn decode_job(mut bytes: &[u8]) -> Option<JobContext> {
    use std::os::unix::ffi::OsStrExt;
    fn u32_at(bytes: &mut &[u8]) -> Option<u32> {
        let (head, rest) = bytes.split_first_chunk::<4>()?;
        *bytes = rest;
        Some(u32::from_le_bytes(*head))
    }
    fn string(bytes: &mut &[u8]) -> Option<Vec<u8>> {
        let len = u32_at(bytes)? as usize;
        let (s, rest) = bytes.split_at_checked(len)?;
        *bytes = rest;
        Some(s.to_vec())
    }
    let reduces = u32_at(&mut bytes)?;
    let mut params = Vec::new();
    for _ in 0..u32_at(&mut bytes)? {
        let k = String::from_utf8(string(&mut bytes)?).ok()?;
        let v = String::from_utf8(string(&mut bytes)?).ok()?;
        params.push((k, v));
    }
    let mut inputs = Vec::new();
    for _ in 0..u32_at(&mut bytes)? {
        let name = String::from_utf8(string(&mut bytes)?).ok()?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&string(&mut bytes)?));
        inputs.push((name, path));
    }
    let mut input_sizes = Vec::new();
    for _ in 0..u32_at(&mut bytes)? {
        let (size, rest) = bytes.split_first_chunk::<8>()?;
        bytes = rest;
        input_sizes.push(u64::from_le_bytes(*size));
    }
    bytes.is_empty().then_some(JobContext { params: Params::new(params), inputs, reduces, input_sizes })
}

/// The text of a panic payload (`panic!` with a literal or with formatting).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_contexts_round_trip_and_malformed_ones_are_refused() {
        let job = JobContext {
            params: Params::new([("pattern".to_string(), "a b=c".to_string()), ("n".to_string(), String::new())]),
            inputs: vec![("in/a.txt".to_string(), PathBuf::from("/abs/in/a.txt")), ("é".to_string(), PathBuf::from("/x"))],
            reduces: 7,
            input_sizes: vec![12, 1 << 40],
        };
        let bytes = encode_job(&job);
        assert_eq!(decode_job(&bytes), Some(job.clone()));
        assert_eq!(decode_job(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_job(&longer), None);
        assert_eq!(decode_job(&encode_job(&JobContext::default())), Some(JobContext::default()));
    }
}
