//! What crosses the network between the job's processes, below the RPC
//! contract: accepting connections within the process's limits, the
//! handshake that authenticates every connection before a byte of the job
//! is exchanged, the TLS that encrypts them when the job has a secret,
//! serving files, and sending reduce outputs to the coordinator.

pub mod accept;
pub mod files;
pub mod handshake;
pub mod secure;
pub mod upload;
