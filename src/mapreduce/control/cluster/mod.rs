//! The standing cluster (`mr-master --serve`): many jobs submitted by id
//! to one pool of long-lived workers. Each job runs in an engine of its
//! own, as the one-job coordinator's; what lives here is what is shared
//! between jobs (see docs/ARCHITECTURE.md, "Cluster mode").

pub mod admission;
pub mod api;
pub mod history;
pub mod job_logs;
pub mod lending;
pub mod queue;
pub mod registry;
pub mod server;
pub mod status_page;
pub mod steps;
pub mod views;
pub mod workers;
