//! The plugin boundary: a versioned C ABI between `mr-worker` and an app.
//!
//! The worker and a plugin may be built by different compilers, so nothing
//! Rust-specific crosses the boundary: only `#[repr(C)]` structs, byte
//! slices as pointer + length, and `extern "C"` functions. A plugin exports
//! two symbols:
//!
//! - [`VERSION_SYMBOL`]: `extern "C" fn() -> u32`, the ABI version it speaks.
//!   The loader ([`crate::plugin`]) reads it first and refuses any version but
//!   [`ABI_VERSION`], before touching anything else.
//! - [`VTABLE_SYMBOL`]: `extern "C" fn() -> *const PluginVTable`.
//!
//! Calls go host → plugin through the vtable; the plugin calls back into the
//! host (to emit a pair, pull the next value, write output, report an error)
//! through a [`HostCalls`] the host passes in. A panic in app code is caught
//! on the plugin side ([`call_app`]) and returned as [`Status::Panicked`] with
//! its message, because unwinding across `extern "C"` would abort the worker.
//!
//! Bump [`ABI_VERSION`] whenever any type or signature here changes.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::app::{App, AppResult, Emitter, MapInput, ValueSource, Values};

/// The ABI version this build of the framework speaks.
pub const ABI_VERSION: u32 = 1;

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

    /// # Safety
    /// `self` must describe `len` readable bytes that outlive `'a`.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr, self.len)
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
}

/// The functions a plugin provides.
#[repr(C)]
pub struct PluginVTable {
    /// Repeats the ABI version, so a vtable can be checked on its own.
    pub abi_version: u32,
    /// The app's name (its Rust type name), for messages.
    pub name: RawBytes,
    /// Runs `App::map` on one input.
    pub map: unsafe extern "C" fn(host: *const HostCalls, filename: RawBytes, contents: RawBytes) -> Status,
    /// Runs `App::reduce` on one key, pulling values with `next_value` and
    /// writing the output value with `write_output` (only on success).
    pub reduce: unsafe extern "C" fn(host: *const HostCalls, key: RawBytes) -> Status,
}

/// Exports `$app` (a type implementing [`App`](crate::App) + `Default`) as a
/// plugin. Use it once, at the root of a `cdylib` crate.
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        fn __mapreduce_app() -> &'static $app {
            static APP: ::std::sync::OnceLock<$app> = ::std::sync::OnceLock::new();
            APP.get_or_init(<$app as ::std::default::Default>::default)
        }

        #[no_mangle]
        pub extern "C" fn mapreduce_plugin_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        #[no_mangle]
        pub extern "C" fn mapreduce_plugin_vtable() -> *const $crate::abi::PluginVTable {
            unsafe extern "C" fn map(
                host: *const $crate::abi::HostCalls,
                filename: $crate::abi::RawBytes,
                contents: $crate::abi::RawBytes,
            ) -> $crate::abi::Status {
                $crate::abi::plugin_map(__mapreduce_app(), host, filename, contents)
            }
            unsafe extern "C" fn reduce(
                host: *const $crate::abi::HostCalls,
                key: $crate::abi::RawBytes,
            ) -> $crate::abi::Status {
                $crate::abi::plugin_reduce(__mapreduce_app(), host, key)
            }
            static NAME: &str = stringify!($app);
            static VTABLE: $crate::abi::PluginVTable = $crate::abi::PluginVTable {
                abi_version: $crate::abi::ABI_VERSION,
                name: $crate::abi::RawBytes { ptr: NAME.as_ptr(), len: NAME.len() },
                map,
                reduce,
            };
            &VTABLE
        }
    };
}

// `RawBytes` holds a raw pointer, which is not `Sync`; the vtable's `name`
// points at a `'static str`, which is safe to share.
unsafe impl Sync for RawBytes {}

/// Plugin side of `map`: decodes the call and runs the app, catching panics.
///
/// # Safety
/// Called only by the host through the vtable, with valid `host` and slices.
#[doc(hidden)]
pub unsafe fn plugin_map<A: App>(app: &A, host: *const HostCalls, filename: RawBytes, contents: RawBytes) -> Status {
    let host = &*host;
    let filename = String::from_utf8_lossy(filename.as_slice());
    let input = MapInput { filename: &filename, contents: contents.as_slice() };
    let mut sink = |key: &[u8], value: &[u8]| (host.emit)(host.ctx, RawBytes::new(key), RawBytes::new(value));
    call_app(host, || app.map(&input, &mut Emitter::new(&mut sink)))
}

/// Plugin side of `reduce`: decodes the call and runs the app, catching panics.
///
/// # Safety
/// Called only by the host through the vtable, with valid arguments.
#[doc(hidden)]
pub unsafe fn plugin_reduce<A: App>(app: &A, host: *const HostCalls, key: RawBytes) -> Status {
    let host = &*host;
    let mut source = HostValues { host };
    let mut value = Vec::new();
    let status = call_app(host, || app.reduce(key.as_slice(), &mut Values::new(&mut source), &mut value));
    if status == Status::Ok {
        // The value is copied into host memory: each side frees only what it
        // allocated.
        (host.write_output)(host.ctx, RawBytes::new(&value));
    }
    status
}

/// Pulls values from the host, one call per value.
struct HostValues<'h> {
    host: &'h HostCalls,
}

impl ValueSource for HostValues<'_> {
    fn next_value(&mut self) -> Option<&[u8]> {
        let mut raw = RawBytes::new(&[]);
        // SAFETY: the host keeps the value alive until the next call.
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
    // SAFETY: `host` is valid for the whole call.
    unsafe { (host.fail)(host.ctx, RawBytes::new(message.as_bytes())) };
    status
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
