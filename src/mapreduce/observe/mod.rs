//! Observers: the job as people and tools see it (status model, terminal
//! progress, HTTP status server and dashboard, Prometheus metrics, the
//! summary). They read the job's state; none changes it.

pub mod http;
pub mod metrics;
pub mod progress;
pub mod status;
pub mod summary;
