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
//! client's, or its task is done) and close the connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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
    crc: crc32fast::Hasher,
}

impl Upload {
    /// Starts the upload of reduce `partition`'s `attempt` on `stream`, a
    /// connection that asked for [`SERVICE_UPLOAD`] (made blocking here:
    /// the upload is written from the reduce's own thread).
    pub fn start(stream: tokio::net::TcpStream, partition: u32, attempt: u64) -> io::Result<Upload> {
        let mut stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(STALL_LIMIT))?;
        let mut header = partition.to_le_bytes().to_vec();
        header.extend_from_slice(&attempt.to_le_bytes());
        stream.write_all(&header)?;
        Ok(Upload { stream, crc: crc32fast::Hasher::new() })
    }

    /// Sends the end of the output, and returns once the coordinator has
    /// it staged; `Err` says why not.
    pub fn finish(mut self) -> io::Result<()> {
        self.check_for_refusal()?;
        let mut end = 0u32.to_le_bytes().to_vec();
        end.extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
        self.stream.write_all(&end).map_err(|e| self.check_for_refusal().err().unwrap_or(e))?;
        self.stream.set_read_timeout(Some(ANSWER_LIMIT))?;
        let mut first = [0];
        self.stream.read_exact(&mut first)?;
        read_answer(&mut self.stream, first[0])
    }

    /// Fails if the coordinator has answered before the end: it refused the
    /// output (the attempt was given up meanwhile) and stops reading it.
    fn check_for_refusal(&mut self) -> io::Result<()> {
        let mut first = [0];
        self.stream.set_nonblocking(true)?;
        let peeked = self.stream.read(&mut first);
        self.stream.set_nonblocking(false)?;
        match peeked {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
            Ok(0) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the coordinator closed the upload")),
            Ok(_) => {
                self.stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                match read_answer(&mut self.stream, first[0]) {
                    Ok(()) => Err(io::Error::new(io::ErrorKind::InvalidData, "the coordinator answered before the end")),
                    Err(e) => Err(e),
                }
            }
        }
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
        let sent = self.stream.write_all(&(frame.len() as u32).to_le_bytes()).and_then(|()| self.stream.write_all(frame));
        // A refusal, if one came, says better why the connection broke.
        sent.map_err(|e| self.check_for_refusal().err().unwrap_or(e))?;
        Ok(frame.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Staging for Upload {
    fn commit(self: Box<Self>) -> io::Result<()> {
        self.finish()
    }
}

/// Reads the rest of the coordinator's answer, whose first byte is
/// `first`: `Ok` if it has the output staged, a `PermissionDenied` error
/// carrying its reason if it refused.
fn read_answer(stream: &mut impl Read, first: u8) -> io::Result<()> {
    match first {
        0 => Ok(()),
        1 => {
            let mut len = [0; 2];
            stream.read_exact(&mut len)?;
            let mut why = vec![0; usize::from(u16::from_le_bytes(len))];
            stream.read_exact(&mut why)?;
            Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("the coordinator refused the output: {}", String::from_utf8_lossy(&why))))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "the coordinator's answer makes no sense")),
    }
}

/// The server's half, on a blocking connection whose reads time out now
/// and then (see [`receive`]): reads which attempt's output it carries.
pub fn read_header(stream: &mut impl Read, still_wanted: &mut dyn FnMut() -> bool) -> io::Result<(u32, u64)> {
    let mut header = [0; 12];
    fill(stream, &mut header, still_wanted)?;
    Ok((u32::from_le_bytes(header[..4].try_into().expect("4 bytes")), u64::from_le_bytes(header[4..].try_into().expect("8 bytes"))))
}

/// The server's half: copies the output's frames from `stream` into `sink`
/// until its end, checks the CRC-32, and returns how many bytes it had.
/// `stream`'s reads should time out every second or so: between frames it
/// waits as long as `still_wanted` says (a reduce may compute for a long
/// time between two outputs), within a frame at most [`STALL_LIMIT`] too;
/// `still_wanted` is asked about once a second while frames flow as well.
/// Fails if the stream breaks or stalls before the end, the CRC-32 or a
/// frame's length is wrong, or the upload is no longer wanted; `sink` then
/// holds part of it.
pub fn receive(stream: &mut impl Read, sink: &mut impl Write, still_wanted: &mut dyn FnMut() -> bool) -> io::Result<u64> {
    let mut crc = crc32fast::Hasher::new();
    let mut buffer = Vec::new();
    let mut total = 0u64;
    let mut asked = Instant::now();
    loop {
        // Asked now and then while frames flow, too.
        if asked.elapsed() >= Duration::from_secs(1) {
            if !still_wanted() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "no longer wanted"));
            }
            asked = Instant::now();
        }
        let mut len = [0; 4];
        fill(stream, &mut len, still_wanted)?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            break;
        }
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes (at most {MAX_FRAME})")));
        }
        buffer.resize(len, 0);
        fill(stream, &mut buffer, still_wanted)?;
        crc.update(&buffer);
        sink.write_all(&buffer)?;
        total += len as u64;
    }
    let mut expected = [0; 4];
    fill(stream, &mut expected, still_wanted)?;
    if crc.finalize() != u32::from_le_bytes(expected) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the output arrived damaged (checksum mismatch)"));
    }
    sink.flush()?;
    Ok(total)
}

/// Fills `buf` from `stream`. A read that times out asks `still_wanted`,
/// and waits on if it says so; once a byte is in, the rest must also
/// follow within [`STALL_LIMIT`].
fn fill(stream: &mut impl Read, buf: &mut [u8], still_wanted: &mut dyn FnMut() -> bool) -> io::Result<()> {
    let mut filled = 0;
    let mut last_byte = Instant::now();
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                filled += n;
                last_byte = Instant::now();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if filled > 0 && last_byte.elapsed() >= STALL_LIMIT {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no progress for {} s", STALL_LIMIT.as_secs())));
                }
                if !still_wanted() {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "no longer wanted"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The server's half: tells the client its output is staged (`Ok`) or why
/// not. After a refusal, reads on for a moment (half a second at most) so
/// that closing does not reset the connection before the client has read
/// why.
pub fn answer(stream: &mut TcpStream, outcome: Result<(), String>) -> io::Result<()> {
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
    stream.write_all(&reply)?;
    if refused {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut discard = vec![0; 64 * 1024];
        while Instant::now() < deadline && stream.read(&mut discard).is_ok_and(|n| n > 0) {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose accepted end goes to `serve`, a blocking server
    /// on a thread of its own, with reads that time out every 100 ms.
    fn connected<T: Send + 'static>(serve: impl FnOnce(TcpStream) -> T + Send + 'static) -> (tokio::net::TcpStream, std::thread::JoinHandle<T>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let server = listener.accept().unwrap().0;
        server.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let served = std::thread::spawn(move || serve(server));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        client.set_nonblocking(true).unwrap();
        let client = runtime.block_on(async { tokio::net::TcpStream::from_std(client) }).unwrap();
        (client, served)
    }

    #[test]
    fn an_output_arrives_whole_in_frames_and_is_acknowledged() {
        let (client, served) = connected(|mut server| {
            let header = read_header(&mut server, &mut || true).unwrap();
            let mut got = Vec::new();
            let len = receive(&mut server, &mut got, &mut || true).unwrap();
            answer(&mut server, Ok(())).unwrap();
            (header, len, got)
        });
        let data: Vec<u8> = (0..(MAX_FRAME * 2 + 77) as u32).map(|i| (i % 241) as u8).collect();
        let mut upload = Upload::start(client, 3, 41).unwrap();
        upload.write_all(b"first ").unwrap();
        upload.write_all(&data).unwrap();
        upload.finish().unwrap();
        let (header, len, got) = served.join().unwrap();
        assert_eq!(header, (3, 41));
        assert_eq!(len, 6 + data.len() as u64);
        assert!(got[..6] == *b"first " && got[6..] == data[..], "the output arrived changed");
    }

    #[test]
    fn a_refusal_reaches_the_writer_with_its_reason() {
        let (client, served) = connected(|mut server| {
            read_header(&mut server, &mut || true).unwrap();
            answer(&mut server, Err("attempt 41 of reduce 3 no longer runs".into())).unwrap();
        });
        let mut upload = Upload::start(client, 3, 41).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let failed = (0..1000).find_map(|_| upload.write_all(&chunk).err()).unwrap_or_else(|| upload.finish().unwrap_err());
        assert_eq!(failed.kind(), io::ErrorKind::PermissionDenied, "{failed}");
        assert!(failed.to_string().contains("no longer runs"), "{failed}");
        served.join().unwrap();
    }

    #[test]
    fn an_upload_no_longer_wanted_is_given_up_while_it_waits() {
        let (client, served) = connected(|mut server| {
            read_header(&mut server, &mut || true).unwrap();
            let mut wanted = 3;
            receive(&mut server, &mut Vec::new(), &mut || {
                wanted -= 1;
                wanted > 0
            })
        });
        let _upload = Upload::start(client, 3, 41).unwrap();
        let given_up = served.join().unwrap().unwrap_err();
        assert_eq!(given_up.kind(), io::ErrorKind::Interrupted, "{given_up}");
    }

    #[test]
    fn damaged_cut_or_oversized_uploads_are_not_taken() {
        let frame = |bytes: &[u8], crc: u32| {
            let mut wire = (bytes.len() as u32).to_le_bytes().to_vec();
            wire.extend_from_slice(bytes);
            wire.extend_from_slice(&0u32.to_le_bytes());
            wire.extend_from_slice(&crc.to_le_bytes());
            wire
        };
        let take = |wire: &[u8]| receive(&mut &wire[..], &mut Vec::new(), &mut || true);
        let good = frame(b"hello", crc32fast::hash(b"hello"));
        assert_eq!(take(&good).unwrap(), 5);
        let damaged = frame(b"hellp", crc32fast::hash(b"hello"));
        assert_eq!(take(&damaged).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(take(&good[..7]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof, "a cut upload is not taken for whole");
        let oversized = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(take(&oversized).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
