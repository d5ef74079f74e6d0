//! The data path: running map and reduce attempts on a worker, the shuffle
//! (buffers, sorted runs, merges), the run format, and output files.

pub mod codec;
pub mod fan_in;
pub mod input_store;
pub mod map_output;
pub mod mapped_input;
pub mod memory_budget;
pub mod merge;
pub mod output;
pub mod plugin;
pub(crate) mod radix_sort;
pub mod remote;
pub mod runfile;
pub mod sequential;
pub mod shuffle;
pub mod skipping;
pub mod split;
pub mod storage;
pub mod task;
pub mod work_dir;
