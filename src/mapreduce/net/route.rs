//! A job's address behind a standing cluster's port, and the route that
//! names it on a connection.
//!
//! A one-job coordinator is reached at `HOST:PORT`: after the handshake a
//! connection sends the byte of the service it wants (`R`, `F`, `U`). A
//! cluster (`mr-master --serve`) serves many jobs on one port, so a job's
//! connection first names its job: the job's address is
//! `HOST:PORT/job-N`, and on the wire the service byte is preceded by
//! [`SERVICE_JOB`] and `N` as 8 bytes, big-endian:
//!
//! ```text
//!   handshake | 'J' | N: u64 BE | 'R' / 'F' / 'U' | the service's bytes
//! ```
//!
//! So everything that dials a coordinator (a worker's RPC link, its input
//! and plugin fetches, a task process's upload) reaches one job of a
//! cluster by being given that job's address instead of the coordinator's.

/// The byte that opens a route to one of a cluster's jobs.
pub const SERVICE_JOB: u8 = b'J';

/// The byte that asks a cluster for its own API (the `mr` client's, and
/// the long-lived workers' questions: which job a free slot serves).
pub const SERVICE_CLUSTER: u8 = b'C';

/// How a job's id is written in an address, and by the cluster.
const JOB_PREFIX: &str = "job-";

/// An address to dial: a host and port, and a job behind it if it is a
/// cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    /// `HOST:PORT`, as given.
    pub host_port: &'a str,
    /// The job's id, for `HOST:PORT/job-N`.
    pub job: Option<u64>,
}

/// An address that is neither `HOST:PORT` nor `HOST:PORT/job-N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad address {0:?}: expected HOST:PORT, or HOST:PORT/job-N for a job of a cluster")]
pub struct AddressError(pub String);

impl<'a> Address<'a> {
    /// Reads `HOST:PORT` or `HOST:PORT/job-N`.
    pub fn parse(addr: &'a str) -> Result<Address<'a>, AddressError> {
        let Some((host_port, route)) = addr.split_once('/') else { return Ok(Address { host_port: addr, job: None }) };
        let job = route.strip_prefix(JOB_PREFIX).and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| AddressError(addr.to_owned()))?;
        Ok(Address { host_port, job: Some(job) })
    }

    /// What a connection sends before its service byte: nothing for a
    /// one-job coordinator, [`SERVICE_JOB`] and the id for a cluster's job.
    pub fn route_bytes(&self) -> Vec<u8> {
        match self.job {
            None => Vec::new(),
            Some(job) => [&[SERVICE_JOB][..], &job.to_be_bytes()].concat(),
        }
    }
}

/// The address of job `job` of the cluster at `cluster` (`HOST:PORT`).
pub fn job_address(cluster: &str, job: u64) -> String {
    format!("{cluster}/{JOB_PREFIX}{job}")
}

/// Reads the job id that follows [`SERVICE_JOB`] on a connection.
pub async fn read_job<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<u64> {
    tokio::io::AsyncReadExt::read_u64(stream).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_a_job() {
        assert_eq!(Address::parse("127.0.0.1:7878"), Ok(Address { host_port: "127.0.0.1:7878", job: None }));
        assert_eq!(Address::parse("[::1]:7878/job-17"), Ok(Address { host_port: "[::1]:7878", job: Some(17) }));
        assert_eq!(Address::parse(&job_address("h:1", 5)).unwrap().job, Some(5));
        for bad in ["h:1/", "h:1/job-", "h:1/job-x", "h:1/17", "h:1/job-1/2", "h:1/job--1"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_route_reads_back() {
        let address = Address::parse("h:1/job-258").unwrap();
        let bytes = address.route_bytes();
        assert_eq!(bytes.first(), Some(&SERVICE_JOB));
        let mut rest = bytes.get(1..).unwrap();
        assert_eq!(read_job(&mut rest).await.unwrap(), 258);
        assert!(Address::parse("h:1").unwrap().route_bytes().is_empty());
    }
}
