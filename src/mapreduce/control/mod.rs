//! The control plane: planning a job, scheduling its tasks, the RPC between
//! coordinator and workers, and keeping the job alive across restarts.

pub mod agent;
pub mod app_cache;
pub mod backup;
pub mod cluster;
pub mod coordinator;
pub mod inputs;
pub mod job_dir;
pub mod job_files;
pub mod job_link;
pub mod job_setup;
pub mod journal;
pub mod link;
pub mod machine_load;
pub mod remote_output;
pub mod report_check;
pub mod rpc;
pub mod scheduler;
pub mod session;
pub mod shipped;
pub mod slot;
pub mod task_host;
pub mod task_process;
pub mod task_protocol;
pub mod worker;
pub mod worker_config;
