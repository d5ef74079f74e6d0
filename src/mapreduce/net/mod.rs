#![warn(clippy::indexing_slicing)]

//! What crosses the network between the job's processes, below the RPC
//! contract: accepting connections within the process's limits, the
//! handshake that authenticates every connection before a byte of the job
//! is exchanged, the TLS that encrypts them when the job has a secret,
//! serving files, and sending reduce outputs to the coordinator.

pub mod accept;
pub mod files;
pub mod handshake;
pub mod route;
pub mod secure;
pub mod upload;

/// The first `max` bytes of `bytes`, or all of them if there are fewer:
/// how a length the wire can carry is put on a peer's or our own text.
pub(crate) fn at_most(bytes: &[u8], max: usize) -> &[u8] {
    bytes.get(..max).unwrap_or(bytes)
}
