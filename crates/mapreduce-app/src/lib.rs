//! The app side of the mapreduce framework: what an app author writes
//! against, and nothing of the host's runtime (no async runtime, RPC or
//! HTTP), so that an app builds in seconds and its plugin stays small.
//!
//! An app implements [`App`] and exports itself with [`export_app!`]; for
//! text it has [`text`], for its own counters [`counters`]. Apps usually
//! name this crate `mapreduce` in their `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! mapreduce = { package = "mapreduce-app", path = "../mapreduce/crates/mapreduce-app" }
//! ```
//!
//! | concept | module |
//! |---|---|
//! | the app API an author implements | [`app`] |
//! | the app's own counters | [`counters`] |
//! | reading the job's inputs from the constructor, through the host | [`job_inputs`] |
//! | the versioned C ABI between worker and plugin | [`abi`] |
//! | word splitting with the lab's semantics | [`text`] |
//! | which reduce partition a key belongs to | [`partition`] |
//! | the table behind `Emitter::count` | `count_table` |
//! | prefetch hints for hot loops | [`cpu`] |
//! | appending short keys and values without a libc call | [`small_copy`] |
//! | typed keys and values through serde (feature `typed`) | `typed` |

#![warn(missing_docs)]
// Every unsafe operation sits in its own `unsafe` block with a `// SAFETY:`
// argument, and no `str` is sliced at a byte index that may split a
// character.
#![warn(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, clippy::string_slice)]

pub mod abi;
pub mod app;
mod count_table;
pub mod counters;
#[doc(hidden)]
pub mod cpu;
pub mod job_inputs;
pub mod partition;
#[doc(hidden)]
pub mod small_copy;
pub mod text;
#[cfg(feature = "typed")]
pub mod typed;

pub use app::{App, AppError, AppResult, Emitter, JobContext, MapInput, OutputFormat, Params, TaskInfo, TaskKind, ValueSource, Values, VecValues};
