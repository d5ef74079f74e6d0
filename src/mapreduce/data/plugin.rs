//! Loading an app plugin and calling it safely: the host side of [`crate::abi`].
//!
//! [`Plugin::open`] resolves an `APP` argument (a path, or a bare name looked
//! up beside the running executable), checks the ABI version, and wraps the
//! vtable in safe `map`/`reduce` methods that report a failed or panicking
//! app call as an [`AppFailure`] instead of unwinding.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;

use crate::abi::{self, HostCalls, PluginVTable, RawBytes, Status};
use crate::app::{JobContext, OutputFormat, ValueSource};
use crate::counters::UserCounters;
use crate::partition::Partitions;

/// Why a plugin could not be loaded. Every variant names the plugin.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum PluginError {
    /// A bare app name with no `lib<name>.so` in the executable's directory.
    #[error("plugin '{name}' not found: no {} (build it with `cargo build --release`, or pass a path to the .so)", .searched.display())]
    NotFound { name: String, searched: PathBuf },
    /// A path that does not exist.
    #[error("plugin {}: no such file", .path.display())]
    NoSuchFile { path: PathBuf },
    /// The dynamic loader refused the file (not a shared library, wrong
    /// architecture, missing dependency, ...).
    #[error("plugin {}: not a loadable shared library: {reason}", .path.display())]
    NotALibrary { path: PathBuf, reason: String },
    /// A shared library that does not export the plugin symbols.
    #[error("plugin {}: not a mapreduce app plugin (no `{symbol}` symbol; export the app with `mapreduce::export_app!`)", .path.display())]
    NotAPlugin { path: PathBuf, symbol: String },
    /// A plugin built against another version of the ABI.
    #[error("plugin {}: built for plugin ABI version {found}, but this mr-worker speaks version {expected}; rebuild the app against this framework", .path.display())]
    AbiMismatch { path: PathBuf, found: u32, expected: u32 },
    /// The executable's own path, needed to resolve a bare name, is unknown.
    #[error("cannot resolve plugin '{name}': the path of the running executable is unknown: {source}")]
    NoExecutableDir { name: String, source: std::io::Error },
}

/// A map or reduce call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum AppFailure {
    /// The app returned an error.
    #[error("app error: {0}")]
    Error(String),
    /// The app panicked; the worker survived.
    #[error("app panicked: {0}")]
    Panic(String),
}

/// A loaded app plugin.
///
/// A plugin, once loaded, stays loaded until the process exits: Rust code in
/// it registers thread-local destructors (std's, or a crate's such as an
/// RNG's) that run when a thread exits, and unloading the library before
/// then makes those calls jump into unmapped memory. A worker loads one
/// plugin, so never unloading costs nothing.
pub struct Plugin {
    /// Points into the library's static data, which is never unloaded.
    vtable: &'static PluginVTable,
    path: PathBuf,
    name: String,
    /// Set by `init`, which must come before any other call.
    capabilities: OnceLock<Capabilities>,
}

/// What an app can do beyond map and reduce, as reported by its `init`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The app has a combiner.
    pub combiner: bool,
    /// The app partitions keys itself.
    pub partitioner: bool,
    /// How reduce output becomes output lines.
    pub output: OutputFormat,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("name", &self.name).finish()
    }
}

impl Plugin {
    /// Resolves `app` (see [`resolve_app`]) and loads it.
    pub fn open(app: &str) -> Result<Plugin, PluginError> {
        Plugin::load(&resolve_app(app)?)
    }

    /// Loads the plugin at `path`, refusing anything that is not a plugin of
    /// this ABI version.
    pub fn load(path: &Path) -> Result<Plugin, PluginError> {
        if !path.is_file() {
            return Err(PluginError::NoSuchFile { path: path.to_owned() });
        }
        // A bare file name would make dlopen search the library path instead
        // of opening this file.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        // SAFETY: loading runs the library's initialisers; a Rust cdylib has
        // none beyond the standard ones. This is the trust we give any plugin.
        let library =
            unsafe { Library::new(&path) }.map_err(|e| PluginError::NotALibrary { path: path.clone(), reason: crate::errors::one_line(&e) })?;
        let not_a_plugin = |symbol: &[u8]| PluginError::NotAPlugin { path: path.clone(), symbol: String::from_utf8_lossy(symbol).into_owned() };
        // SAFETY: every ABI version declares this symbol as
        // `extern "C" fn() -> u32` (`abi::VERSION_SYMBOL`), so the type we
        // read it at is right for any plugin; the function is called while
        // `library` is still loaded.
        let version = unsafe { library.get::<extern "C" fn() -> u32>(abi::VERSION_SYMBOL) }.map_err(|_| not_a_plugin(abi::VERSION_SYMBOL))?();
        if version != abi::ABI_VERSION {
            return Err(PluginError::AbiMismatch { path, found: version, expected: abi::ABI_VERSION });
        }
        // SAFETY: the plugin speaks this ABI version (checked above), whose
        // `VTABLE_SYMBOL` is `extern "C" fn() -> *const PluginVTable` with
        // this very `PluginVTable` layout; called while `library` is loaded.
        let vtable_fn =
            unsafe { library.get::<extern "C" fn() -> *const PluginVTable>(abi::VTABLE_SYMBOL) }.map_err(|_| not_a_plugin(abi::VTABLE_SYMBOL))?;
        let vtable_ptr = vtable_fn();
        // SAFETY: a plugin of this ABI version returns a pointer to a
        // `static PluginVTable` inside the library (see `export_app!`),
        // which is loaded, so it is valid, aligned and initialised.
        let found = unsafe { (*vtable_ptr).abi_version };
        if found != abi::ABI_VERSION {
            return Err(PluginError::AbiMismatch { path, found, expected: abi::ABI_VERSION });
        }
        // Accepted: from here on the library is never unloaded (see `Plugin`).
        // A refused one was dropped above before any of its app code ran.
        std::mem::forget(library);
        // SAFETY: the vtable is a `static` of the library, valid as read
        // above, and the library was just leaked (never unloaded), so the
        // reference may be `'static`; a static is never written to.
        let vtable: &'static PluginVTable = unsafe { &*vtable_ptr };
        // SAFETY: `export_app!` sets `name` to a `'static str` inside the
        // library, which stays loaded; it is copied at once anyway.
        let name = String::from_utf8_lossy(unsafe { vtable.name.as_slice() }).into_owned();
        Ok(Plugin { vtable, path, name, capabilities: OnceLock::new() })
    }

    /// The plugin file that was loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The app's name, as its crate spelled its type.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the app for `job`; must precede every other call. A second
    /// call keeps the first app and returns its capabilities.
    pub fn init(&self, job: &JobContext) -> Result<Capabilities, AppFailure> {
        let local = |input: u32, offset: u64, len: u64| {
            let (_, path) = job.inputs.get(input as usize).ok_or_else(|| format!("the job has no input number {input}"))?;
            mapreduce_app::job_inputs::read_range(path, offset, len).map_err(|e| format!("{}: {e}", path.display()))
        };
        self.init_with_inputs(job, &local)
    }

    /// [`Plugin::init`], with the app's reads of its inputs
    /// ([`JobContext::read_input`]) answered by `read_input(input, offset,
    /// len)` (a worker without the files fetches them).
    pub fn init_with_inputs(&self, job: &JobContext, read_input: &InputReader<'_>) -> Result<Capabilities, AppFailure> {
        let encoded = abi::encode_job(job);
        let mut bits = 0u32;
        let call = CallState { input_reader: Some(read_input), ..CallState::new() };
        // SAFETY: the vtable's `init` requires a valid `host` (made by
        // `run` for this call, the `CallState` alive throughout), `job`
        // bytes readable for the call (`encoded` lives past it) and
        // `capabilities` valid for a write (`bits`, a live local).
        call.run(|host| unsafe { (self.vtable.init)(host, RawBytes::new(&encoded), &mut bits) })?;
        let caps = Capabilities {
            combiner: bits & abi::CAP_COMBINER != 0,
            partitioner: bits & abi::CAP_PARTITIONER != 0,
            output: if bits & abi::CAP_RAW_OUTPUT != 0 {
                OutputFormat::Raw
            } else if bits & abi::CAP_TAB_SEPARATED != 0 {
                OutputFormat::KeyTabValue
            } else {
                OutputFormat::KeyValue
            },
        };
        Ok(*self.capabilities.get_or_init(|| caps))
    }

    /// What the app can do (all false before `init`).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities.get().copied().unwrap_or_default()
    }

    /// Runs the app's map on `contents`, which start at byte `offset` of
    /// the file `filename`, handing every emitted pair to `emit`.
    /// The app's counters go to `counters`.
    pub fn map(
        &self,
        filename: &str,
        contents: &[u8],
        offset: u64,
        emit: &mut dyn FnMut(&[u8], &[u8]),
        counters: &UserCounters,
    ) -> Result<(), AppFailure> {
        let call = CallState { emit: Some(emit), counters: Some(counters), ..CallState::new() };
        // SAFETY: the vtable's `map` requires a valid `host` (made by `run`
        // for this call, the `CallState` alive throughout) and `filename`
        // and `contents` readable for the call: both are borrowed slices
        // that outlive it.
        call.run(|host| unsafe { (self.vtable.map)(host, RawBytes::new(filename.as_bytes()), RawBytes::new(contents), offset) })
    }

    /// Runs the app's reduce on one key; the output value is appended to
    /// `out`, the app's counters go to `counters`.
    pub fn reduce(&self, key: &[u8], values: &mut dyn ValueSource, out: &mut Vec<u8>, counters: &UserCounters) -> Result<(), AppFailure> {
        self.fold(self.vtable.reduce, key, values, out, counters)
    }

    /// Runs the app's combiner on one key; the combined value is appended to
    /// `out`. Only for apps whose capabilities include a combiner.
    pub fn combine(&self, key: &[u8], values: &mut dyn ValueSource, out: &mut Vec<u8>, counters: &UserCounters) -> Result<(), AppFailure> {
        self.fold(self.vtable.combine, key, values, out, counters)
    }

    fn fold(
        &self,
        function: unsafe extern "C" fn(*const HostCalls, RawBytes) -> Status,
        key: &[u8],
        values: &mut dyn ValueSource,
        out: &mut Vec<u8>,
        counters: &UserCounters,
    ) -> Result<(), AppFailure> {
        let call = CallState { values: Some(values), output: Some(out), counters: Some(counters), ..CallState::new() };
        // SAFETY: `function` is the vtable's `reduce` or `combine`, which
        // require a valid `host` (made by `run` for this call, the
        // `CallState` alive throughout) and `key` readable for the call (a
        // borrowed slice that outlives it).
        call.run(|host| unsafe { function(host, RawBytes::new(key)) })
    }

    /// Tells the app a task attempt starts on this thread (`map`: a map
    /// task, else a reduce task).
    pub fn start_task(&self, map: bool, index: u32, counters: &UserCounters) -> Result<(), AppFailure> {
        let kind = if map { abi::TASK_MAP } else { abi::TASK_REDUCE };
        let call = CallState { counters: Some(counters), ..CallState::new() };
        // SAFETY: the vtable's function requires only a valid `host`: `run`
        // makes it for this call, and the `CallState` behind its `ctx`
        // stays alive and unborrowed until the call returns.
        call.run(|host| unsafe { (self.vtable.start_task)(host, kind, index) })
    }

    /// Ends a map task attempt: the app emits what it held back to `emit`.
    pub fn finish_map(&self, emit: &mut dyn FnMut(&[u8], &[u8]), counters: &UserCounters) -> Result<(), AppFailure> {
        let call = CallState { emit: Some(emit), counters: Some(counters), ..CallState::new() };
        // SAFETY: the vtable's function requires only a valid `host`: `run`
        // makes it for this call, and the `CallState` behind its `ctx`
        // stays alive and unborrowed until the call returns.
        call.run(|host| unsafe { (self.vtable.finish_map)(host) })
    }

    /// Ends a reduce task attempt: the app's last output bytes are appended
    /// to `out`.
    pub fn finish_reduce(&self, out: &mut Vec<u8>, counters: &UserCounters) -> Result<(), AppFailure> {
        let call = CallState { output: Some(out), counters: Some(counters), ..CallState::new() };
        // SAFETY: the vtable's function requires only a valid `host`: `run`
        // makes it for this call, and the `CallState` behind its `ctx`
        // stays alive and unborrowed until the call returns.
        call.run(|host| unsafe { (self.vtable.finish_reduce)(host) })
    }

    /// The partition of `key` among `partitions`: the app's own partitioner
    /// if it has one, the framework's hash otherwise.
    pub fn partition(&self, key: &[u8], partitions: &Partitions) -> Result<u32, AppFailure> {
        if !self.capabilities().partitioner {
            return Ok(partitions.of(key));
        }
        let partitions = partitions.count();
        // SAFETY: the vtable's `partition` requires `key` readable for the
        // call: it is a borrowed slice that outlives it.
        match unsafe { (self.vtable.partition)(RawBytes::new(key), partitions) } {
            p if p < partitions => Ok(p),
            abi::PARTITION_FAILED => Err(AppFailure::Panic(format!("the app's partitioner panicked on key {:?}", String::from_utf8_lossy(key)))),
            p => Err(AppFailure::Error(format!(
                "the app's partitioner put key {:?} in partition {p}, but there are only {partitions}",
                String::from_utf8_lossy(key)
            ))),
        }
    }
}

/// The SHA-256 of the file at `path`, in hex: how a job's app is known.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Resolves an `APP` argument to a plugin path: anything that looks like a
/// path (contains `/` or ends in `.so`) is used as is; a bare `NAME` means
/// `libNAME.so` in the directory of the running executable, where
/// `cargo build --release` puts the plugins beside `mr-worker`.
pub fn resolve_app(app: &str) -> Result<PathBuf, PluginError> {
    if app.contains('/') || app.ends_with(".so") {
        return Ok(PathBuf::from(app));
    }
    let exe = std::env::current_exe().map_err(|source| PluginError::NoExecutableDir { name: app.to_owned(), source })?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidate = dir.join(format!("lib{app}.so"));
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(PluginError::NotFound { name: app.to_owned(), searched: candidate })
    }
}

/// Reads bytes of one of the job's inputs for the app's constructor:
/// `(input, offset, len)` to the bytes, or why not.
pub type InputReader<'a> = dyn Fn(u32, u64, u64) -> Result<Vec<u8>, String> + 'a;

/// Where a map's intermediate pairs go: `(key, value)`, borrowed for the
/// call only.
type EmitPair<'a> = dyn FnMut(&[u8], &[u8]) + 'a;

/// The host's side of one call: what the plugin's callbacks reach via `ctx`.
struct CallState<'a> {
    emit: Option<&'a mut EmitPair<'a>>,
    values: Option<&'a mut dyn ValueSource>,
    output: Option<&'a mut Vec<u8>>,
    counters: Option<&'a UserCounters>,
    input_reader: Option<&'a InputReader<'a>>,
    /// The last answer to `read_input`, alive until the next.
    read: Vec<u8>,
    failure: Option<String>,
}

impl<'a> CallState<'a> {
    fn new() -> Self {
        CallState { emit: None, values: None, output: None, counters: None, input_reader: None, read: Vec::new(), failure: None }
    }

    fn host_calls(&mut self) -> HostCalls {
        HostCalls {
            ctx: self as *mut CallState<'a> as *mut c_void,
            emit: host_emit,
            next_value: host_next_value,
            write_output: host_write_output,
            fail: host_fail,
            add_counter: host_add_counter,
            read_input: host_read_input,
        }
    }

    /// Makes one call into the plugin with host calls that reach this
    /// state, and turns its status into a result.
    fn run(mut self, call: impl FnOnce(&HostCalls) -> Status) -> Result<(), AppFailure> {
        // `self` stays put in this frame while `host` points at it.
        let host = self.host_calls();
        let status = call(&host);
        self.finish(status)
    }

    fn finish(self, status: Status) -> Result<(), AppFailure> {
        let message = || self.failure.clone().unwrap_or_else(|| "no message".to_string());
        match status {
            Status::Ok => Ok(()),
            Status::Failed => Err(AppFailure::Error(message())),
            Status::Panicked => Err(AppFailure::Panic(message())),
        }
    }
}

// The callbacks below recover the `CallState` from `ctx`. Each has the same
// contract, the one `HostCalls` documents for the plugin:
//
// # Safety
// `ctx` must be the `ctx` of the `HostCalls` that `CallState::run` made for
// the plugin call in progress, and the callback must be called during that
// call, on its thread: then the `CallState` is alive (it stays put in
// `run`'s frame until `call` returns) and nothing else borrows it (`run`
// keeps no reference to it while the plugin runs, and the callbacks do not
// re-enter one another). Every `RawBytes` argument must describe bytes that
// are readable for the duration of the callback, and every `out` pointer
// must be valid for a write.

/// The state behind `ctx`, borrowed for one callback.
///
/// # Safety
/// As for the callbacks above: `ctx` is the live, otherwise unborrowed
/// `CallState` of the plugin call in progress on this thread.
unsafe fn call_state<'s>(ctx: *mut c_void) -> &'s mut CallState<'s> {
    // SAFETY: the caller guarantees `ctx` points at a live `CallState` that
    // no one else borrows for `'s` (the callback's body), so a unique
    // reference to it is sound. Its real lifetime parameter outlives `'s`;
    // naming it `'s` is harmless because the callbacks assign only its
    // lifetime-free fields (`read`, `failure`).
    unsafe { &mut *(ctx as *mut CallState<'s>) }
}

/// `HostCalls::emit`: hands a pair to the map's sink (see the contract above).
unsafe extern "C" fn host_emit(ctx: *mut c_void, key: RawBytes, value: RawBytes) {
    // SAFETY: the plugin passes the `ctx` of the call in progress (contract
    // above).
    let call = unsafe { call_state(ctx) };
    if let Some(emit) = call.emit.as_mut() {
        // SAFETY: the plugin guarantees `key` and `value` are readable for
        // this callback; the sink copies what it keeps.
        let (key, value) = unsafe { (key.as_slice(), value.as_slice()) };
        emit(key, value);
    }
}

/// `HostCalls::next_value`: the reduce's next value in `*out`, valid until
/// the next `next_value` (see the contract above).
unsafe extern "C" fn host_next_value(ctx: *mut c_void, out: *mut RawBytes) -> bool {
    // SAFETY: the plugin passes the `ctx` of the call in progress (contract
    // above).
    let call = unsafe { call_state(ctx) };
    match call.values.as_mut().and_then(|v| v.next_value()) {
        Some(value) => {
            // SAFETY: the plugin guarantees `out` is valid for a write. The
            // bytes it gets belong to the `ValueSource`, which keeps them
            // until it is asked for the next value, as `HostCalls` promises.
            unsafe { *out = RawBytes::new(value) };
            true
        }
        None => false,
    }
}

/// `HostCalls::write_output`: appends to the output value (see the
/// contract above).
unsafe extern "C" fn host_write_output(ctx: *mut c_void, bytes: RawBytes) {
    // SAFETY: the plugin passes the `ctx` of the call in progress (contract
    // above).
    let call = unsafe { call_state(ctx) };
    if let Some(out) = call.output.as_mut() {
        // SAFETY: the plugin guarantees `bytes` is readable for this
        // callback; they are copied at once.
        out.extend_from_slice(unsafe { bytes.as_slice() });
    }
}

/// `HostCalls::fail`: records why the call failed (see the contract above).
unsafe extern "C" fn host_fail(ctx: *mut c_void, message: RawBytes) {
    // SAFETY: the plugin passes the `ctx` of the call in progress (contract
    // above).
    let call = unsafe { call_state(ctx) };
    // SAFETY: the plugin guarantees `message` is readable for this
    // callback; it is copied at once.
    let message = unsafe { message.as_slice() };
    call.failure = Some(String::from_utf8_lossy(message).into_owned());
}

/// `HostCalls::read_input`: reads input bytes for the app's constructor
/// into `call.read`, which `*out` then describes until the next
/// `read_input` (see the contract above).
unsafe extern "C" fn host_read_input(ctx: *mut c_void, input: u32, offset: u64, len: u64, out: *mut RawBytes) -> u32 {
    // SAFETY: the plugin passes the `ctx` of the call in progress (contract
    // above).
    let call = unsafe { call_state(ctx) };
    let Some(read) = call.input_reader else { return abi::READ_UNSERVED };
    let result = read(input, offset, len);
    let answer = if result.is_ok() { abi::READ_OK } else { abi::READ_FAILED };
    call.read = result.unwrap_or_else(String::into_bytes);
    // SAFETY: the plugin guarantees `out` is valid for a write. The bytes
    // it describes are `call.read`, which lives as long as the `CallState`
    // and is replaced only by the next `read_input`, as `HostCalls`
    // promises.
    unsafe { *out = RawBytes::new(&call.read) };
    answer
}

/// `HostCalls::add_counter`: adds to the app's counter `name` (see the
/// contract above).
unsafe extern "C" fn host_add_counter(ctx: *mut c_void, name: RawBytes, delta: u64) {
    // SAFETY: the plugin passes the `ctx` of the call in progress (contract
    // above).
    let call = unsafe { call_state(ctx) };
    if let Some(counters) = call.counters {
        // SAFETY: the plugin guarantees `name` is readable for this
        // callback; it is copied at once.
        let name = unsafe { name.as_slice() };
        counters.add(&String::from_utf8_lossy(name), delta);
    }
}
