//! Sending a reduce's output to the coordinator while the reduce writes it:
//! how the output of a worker that does not share the job directory gets
//! there (as a reduce in Google MapReduce writes to the global file system).
//! The coordinator keeps it as the attempt's staged output, and commits it
//! with the same rename as an output written in place; the output is never
//! written on the worker's disk, nor sent twice.
//!
//! A connection starts with the [handshake](crate::handshake) and the byte
//! [`SERVICE_UPLOAD`], then carries one output:
//!
//! ```text
//! client                                         coordinator
//!   | partition u32, attempt u64 -->
//!   | (len u32 (1..=MAX_FRAME), bytes)* -->      appended to a temporary file
//!   | 0 u32, crc32 u32 -->                       the CRC-32 of every byte
//!   |                       <-- 0                staged: the report may follow
//!   |                       <-- 1, len u16, why  refused, or failed
//! ```
//!
//! The coordinator may answer early with a refusal (the attempt is not the
//! client's, or no longer runs) and close the connection.

use std::io::{self, Write};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::files::STALL_LIMIT;
use crate::output::Staging;

/// The byte that asks the coordinator's port to take an upload.
pub const SERVICE_UPLOAD: u8 = b'U';

/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 4 << 20;

/// How long a client waits for the coordinator's answer once it has sent
/// the whole output (the coordinator has it then; it only renames it).
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// An output being sent, as a blocking writer for the reduce's thread:
/// every write is a frame. [`Upload::finish`] ends it and waits for the
/// coordinator to say it has it whole; an upload dropped unfinished is
/// thrown away by the coordinator.
pub struct Upload {
    stream: TcpStream,
    runtime: tokio::runtime::Handle,
    crc: crc32fast::Hasher,
}

impl Upload {
    /// Starts the upload of reduce `partition`'s `attempt` on `stream`, a
    /// connection that asked for [`SERVICE_UPLOAD`]. `runtime` runs its
    /// I/O; the writer is used off it.
    pub fn start(mut stream: TcpStream, runtime: tokio::runtime::Handle, partition: u32, attempt: u64) -> io::Result<Upload> {
        let mut header = partition.to_le_bytes().to_vec();
        header.extend_from_slice(&attempt.to_le_bytes());
        runtime.block_on(patient(stream.write_all(&header)))?;
        Ok(Upload { stream, runtime, crc: crc32fast::Hasher::new() })
    }

    /// Sends the end of the output, and returns once the coordinator has
    /// it staged; `Err` says why not.
    pub fn finish(mut self) -> io::Result<()> {
        let mut end = 0u32.to_le_bytes().to_vec();
        end.extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
        self.check_for_refusal()?;
        self.runtime.block_on(patient(self.stream.write_all(&end)))?;
        self.runtime.block_on(async {
            tokio::time::timeout(ANSWER_LIMIT, read_answer(&mut self.stream, None))
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "the coordinator did not answer")))
        })
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.check_for_refusal()?;
        let frame = &buf[..buf.len().min(MAX_FRAME)];
        self.crc.update(frame);
        let len = (frame.len() as u32).to_le_bytes();
        let stream = &mut self.stream;
        self.runtime.block_on(async {
            patient(stream.write_all(&len)).await?;
            patient(stream.write_all(frame)).await
        })?;
        Ok(frame.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload {
    /// Fails if the coordinator has answered before the end: it refused the
    /// output (the attempt was given up meanwhile) and stops reading it.
    fn check_for_refusal(&mut self) -> io::Result<()> {
        let mut first = [0];
        match self.stream.try_read(&mut first) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
            Ok(0) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the coordinator closed the upload")),
            Ok(_) => match self.runtime.block_on(read_answer(&mut self.stream, Some(first[0]))) {
                Ok(()) => Err(io::Error::new(io::ErrorKind::InvalidData, "the coordinator answered before the end")),
                Err(e) => Err(e),
            },
        }
    }
}

impl Staging for Upload {
    fn commit(self: Box<Self>) -> io::Result<()> {
        self.finish()
    }
}

/// Reads the coordinator's answer (whose first byte is `first`, if that
/// was read already): `Ok` if it has the output staged, a
/// `PermissionDenied` error carrying its reason if it refused.
async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S, first: Option<u8>) -> io::Result<()> {
    let first = match first {
        Some(byte) => byte,
        None => stream.read_u8().await?,
    };
    match first {
        0 => Ok(()),
        1 => {
            let len = stream.read_u16_le().await?;
            let mut why = vec![0; usize::from(len)];
            stream.read_exact(&mut why).await?;
            Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("the coordinator refused the output: {}", String::from_utf8_lossy(&why))))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "the coordinator's answer makes no sense")),
    }
}

/// The server's half: reads which attempt's output a connection carries.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(u32, u64)> {
    let partition = patient(stream.read_u32_le()).await?;
    let attempt = patient(stream.read_u64_le()).await?;
    Ok((partition, attempt))
}

/// The server's half: copies the output's frames from `stream` into `sink`
/// until its end, checks the CRC-32, and returns how many bytes it had.
/// Fails if the stream breaks, or stalls within a frame, before the end, or
/// the CRC-32 or a frame's length is wrong; `sink` then holds part of it.
/// Between frames it waits as long as it takes (a reduce may compute for a
/// long time between two outputs): the caller decides how long the upload
/// is worth waiting for.
pub async fn receive<S, W>(stream: &mut S, sink: &mut W) -> io::Result<u64>
where
    S: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut crc = crc32fast::Hasher::new();
    let mut buffer = Vec::new();
    let mut total = 0u64;
    loop {
        let len = stream.read_u32_le().await? as usize;
        if len == 0 {
            break;
        }
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes (at most {MAX_FRAME})")));
        }
        buffer.resize(len, 0);
        patient(stream.read_exact(&mut buffer)).await?;
        crc.update(&buffer);
        sink.write_all(&buffer).await?;
        total += len as u64;
    }
    let expected = patient(stream.read_u32_le()).await?;
    if crc.finalize() != expected {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the output arrived damaged (checksum mismatch)"));
    }
    sink.flush().await?;
    Ok(total)
}

/// The server's half: tells the client its output is staged (`Ok`) or why
/// not. After a refusal, reads on for a moment so that closing does not
/// reset the connection before the client has read why.
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, outcome: Result<(), String>) -> io::Result<()> {
    let refused = outcome.is_err();
    let reply = match outcome {
        Ok(()) => vec![0],
        Err(why) => {
            let why = &why.as_bytes()[..why.len().min(u16::MAX as usize)];
            let mut reply = vec![1];
            reply.extend_from_slice(&(why.len() as u16).to_le_bytes());
            reply.extend_from_slice(why);
            reply
        }
    };
    stream.write_all(&reply).await?;
    stream.flush().await?;
    if refused {
        let mut discard = tokio::io::sink();
        let _ = tokio::time::timeout(Duration::from_secs(2), tokio::io::copy(stream, &mut discard)).await;
    }
    Ok(())
}

/// `io`, failed with `TimedOut` if it takes longer than [`STALL_LIMIT`].
async fn patient<T>(io: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(STALL_LIMIT, io).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no progress for {} s", STALL_LIMIT.as_secs())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime for the server's half, and a connection to it whose
    /// accepted end goes to `serve`.
    fn connected<F, Fut>(serve: F) -> (tokio::runtime::Runtime, TcpStream, tokio::task::JoinHandle<Fut::Output>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (client, server) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap());
            let (client, accepted) = tokio::join!(client, listener.accept());
            (client.unwrap(), accepted.unwrap().0)
        });
        let served = runtime.spawn(serve(server));
        (runtime, client, served)
    }

    #[test]
    fn an_output_arrives_whole_in_frames_and_is_acknowledged() {
        let (runtime, client, served) = connected(|mut server| async move {
            let header = read_header(&mut server).await.unwrap();
            let mut got = Vec::new();
            let len = receive(&mut server, &mut got).await.unwrap();
            answer(&mut server, Ok(())).await.unwrap();
            (header, len, got)
        });
        let data: Vec<u8> = (0..(MAX_FRAME * 2 + 77) as u32).map(|i| (i % 241) as u8).collect();
        let mut upload = Upload::start(client, runtime.handle().clone(), 3, 41).unwrap();
        upload.write_all(b"first ").unwrap();
        upload.write_all(&data).unwrap();
        upload.finish().unwrap();
        let (header, len, got) = runtime.block_on(served).unwrap();
        assert_eq!(header, (3, 41));
        assert_eq!(len, 6 + data.len() as u64);
        assert!(got[..6] == *b"first " && got[6..] == data[..], "the output arrived changed");
    }

    #[test]
    fn a_refusal_reaches_the_writer_with_its_reason() {
        let (runtime, client, served) = connected(|mut server| async move {
            read_header(&mut server).await.unwrap();
            answer(&mut server, Err("attempt 41 of reduce 3 no longer runs".into())).await.unwrap();
        });
        let mut upload = Upload::start(client, runtime.handle().clone(), 3, 41).unwrap();
        runtime.block_on(served).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let failed = (0..1000).find_map(|_| upload.write_all(&chunk).err()).unwrap_or_else(|| upload.finish().unwrap_err());
        assert_eq!(failed.kind(), io::ErrorKind::PermissionDenied, "{failed}");
        assert!(failed.to_string().contains("no longer runs"), "{failed}");
    }

    #[tokio::test]
    async fn damaged_cut_or_oversized_uploads_are_not_taken() {
        let frame = |bytes: &[u8], crc: u32| {
            let mut wire = (bytes.len() as u32).to_le_bytes().to_vec();
            wire.extend_from_slice(bytes);
            wire.extend_from_slice(&0u32.to_le_bytes());
            wire.extend_from_slice(&crc.to_le_bytes());
            wire
        };
        let good = frame(b"hello", crc32fast::hash(b"hello"));
        assert_eq!(receive(&mut &good[..], &mut Vec::new()).await.unwrap(), 5);
        let damaged = frame(b"hellp", crc32fast::hash(b"hello"));
        let err = receive(&mut &damaged[..], &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = receive(&mut &good[..7], &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "a cut upload is not taken for whole");
        let oversized = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let err = receive(&mut &oversized[..], &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
