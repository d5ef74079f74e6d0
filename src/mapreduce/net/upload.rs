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
use std::time::{Duration, Instant};

use crate::files::STALL_LIMIT;
use crate::output::Staging;
use crate::secure::Blocking;

/// The byte that asks the coordinator's port to take an upload.
pub const SERVICE_UPLOAD: u8 = b'U';

/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 4 << 20;

/// Bytes of a frame the coordinator reads and writes at a time: its memory
/// per upload, whatever length a frame announces.
const PIECE: usize = 64 * 1024;

/// How long a client waits for the coordinator's answer once it has sent
/// the whole output (the coordinator has it then; it only renames it).
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// An output being sent, as a blocking writer for the reduce's thread:
/// every write is a frame. [`Upload::finish`] ends it and waits for the
/// coordinator to say it has it whole; an upload dropped unfinished is
/// thrown away by the coordinator.
pub struct Upload {
    stream: Blocking,
    crc: crc32fast::Hasher,
}

impl Upload {
    /// Starts the upload of reduce `partition`'s `attempt` on `stream`, a
    /// connection that asked for [`SERVICE_UPLOAD`], used from the reduce's
    /// own thread.
    pub fn start(mut stream: Blocking, partition: u32, attempt: u64) -> io::Result<Upload> {
        stream.set_write_timeout(Some(STALL_LIMIT));
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
        self.stream.set_read_timeout(Some(ANSWER_LIMIT));
        let mut first = [0];
        self.stream.read_exact(&mut first)?;
        read_answer(&mut self.stream, first[0])
    }

    /// Fails if the coordinator has answered before the end: it refused the
    /// output (the attempt was given up meanwhile) and stops reading it.
    fn check_for_refusal(&mut self) -> io::Result<()> {
        let mut first = [0];
        match self.stream.read_ready(&mut first)? {
            None => Ok(()),
            Some(0) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the coordinator closed the upload")),
            Some(_) => {
                self.stream.set_read_timeout(Some(Duration::from_secs(1)));
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
        let frame = super::at_most(buf, MAX_FRAME);
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
    fill(stream, &mut header, still_wanted, None)?;
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
    let mut piece = vec![0; PIECE];
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
        let mut last_byte = fill(stream, &mut len, still_wanted, None)?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            break;
        }
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes (at most {MAX_FRAME})")));
        }
        // In pieces: the frame's length is the client's word, not memory.
        let mut left = len;
        while left > 0 {
            let piece = piece.get_mut(..left.min(PIECE)).filter(|piece| !piece.is_empty()).ok_or(io::ErrorKind::InvalidInput)?;
            last_byte = fill(stream, piece, still_wanted, Some(last_byte))?;
            crc.update(piece);
            sink.write_all(piece)?;
            left -= piece.len();
        }
        total += len as u64;
    }
    let mut expected = [0; 4];
    fill(stream, &mut expected, still_wanted, None)?;
    if crc.finalize() != u32::from_le_bytes(expected) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the output arrived damaged (checksum mismatch)"));
    }
    sink.flush()?;
    Ok(total)
}

/// Fills `buf` from `stream`; returns when its last byte came. A read that
/// times out asks `still_wanted`, and waits on if it says so; once a byte
/// is in (or from `mid_frame`, the last byte of the frame `buf` continues),
/// the rest must also follow within [`STALL_LIMIT`].
fn fill(stream: &mut impl Read, buf: &mut [u8], still_wanted: &mut dyn FnMut() -> bool, mid_frame: Option<Instant>) -> io::Result<Instant> {
    let mut filled = 0;
    let mut last_byte = mid_frame.unwrap_or_else(Instant::now);
    while filled < buf.len() {
        match stream.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                filled += n;
                last_byte = Instant::now();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if (filled > 0 || mid_frame.is_some()) && last_byte.elapsed() >= STALL_LIMIT {
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
    Ok(last_byte)
}

/// The server's half: tells the client its output is staged (`Ok`) or why
/// not. After a refusal, reads on for a moment (half a second at most) so
/// that closing does not reset the connection before the client has read
/// why.
pub fn answer(stream: &mut Blocking, outcome: Result<(), String>) -> io::Result<()> {
    let refused = outcome.is_err();
    let reply = match outcome {
        Ok(()) => vec![0],
        Err(why) => {
            let why = super::at_most(why.as_bytes(), u16::MAX as usize);
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

    /// A connection between two of a job's processes (through the
    /// handshake, so encrypted) whose accepted end goes to `serve`, a
    /// blocking server on a thread of its own, with reads that time out
    /// every 100 ms. The runtime drives both ends; keep it.
    fn connected<T: Send + 'static>(
        serve: impl FnOnce(Blocking) -> T + Send + 'static,
    ) -> (Blocking, std::thread::JoinHandle<T>, tokio::runtime::Runtime) {
        use crate::handshake::{self, Identity, Secret};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let key = Secret::from_bytes(b"0123456789abcdef").unwrap();
        let (client, server) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let accepted = async {
                let (tcp, _) = listener.accept().await.unwrap();
                handshake::accept(tcp, Some(&key), |_| Ok(())).await.unwrap().0
            };
            let me = Identity::new("w".into());
            let dialled = handshake::dial(&addr, Some(&key), &me, SERVICE_UPLOAD, None);
            let (server, client) = tokio::join!(accepted, dialled);
            (client.unwrap(), server)
        });
        assert!(client.is_encrypted());
        let mut server = Blocking::new(server, runtime.handle().clone());
        server.set_read_timeout(Some(Duration::from_millis(100)));
        let served = std::thread::spawn(move || {
            let mut service = [0];
            server.read_exact(&mut service).unwrap();
            assert_eq!(service[0], SERVICE_UPLOAD);
            serve(server)
        });
        (Blocking::new(client, runtime.handle().clone()), served, runtime)
    }

    #[test]
    fn an_output_arrives_whole_in_frames_and_is_acknowledged() {
        let (client, served, _runtime) = connected(|mut server| {
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
        let (client, served, _runtime) = connected(|mut server| {
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
        let (client, served, _runtime) = connected(|mut server| {
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

    /// An upload as a client sends it: the header, `data` in frames of
    /// `frame` bytes, the end and the CRC-32 of `data`.
    fn wire(partition: u32, attempt: u64, data: &[u8], frame: usize) -> Vec<u8> {
        let mut wire = partition.to_le_bytes().to_vec();
        wire.extend_from_slice(&attempt.to_le_bytes());
        for chunk in data.chunks(frame.max(1)) {
            wire.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            wire.extend_from_slice(chunk);
        }
        wire.extend_from_slice(&0u32.to_le_bytes());
        wire.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        wire
    }

    /// The header and the output read from `bytes` as the coordinator does.
    fn take_all(bytes: &[u8]) -> io::Result<((u32, u64), Vec<u8>)> {
        let mut stream = bytes;
        let header = read_header(&mut stream, &mut || true)?;
        let mut sink = Vec::new();
        let len = receive(&mut stream, &mut sink, &mut || true)?;
        assert_eq!(len, sink.len() as u64);
        Ok((header, sink))
    }

    #[test]
    fn a_frame_is_received_in_pieces_not_as_announced() {
        let data: Vec<u8> = (0..MAX_FRAME as u32).map(|i| (i % 239) as u8).collect();
        let (header, got) = take_all(&wire(1, 2, &data, MAX_FRAME)).unwrap();
        assert!(header == (1, 2) && got == data);
        // Announces a whole frame and stops after a piece: nothing of the
        // announced size was reserved, and the cut is seen.
        let mut cut = wire(1, 2, &data, MAX_FRAME);
        cut.truncate(12 + 4 + PIECE + 1);
        assert_eq!(take_all(&cut).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Fuzz-style properties of the upload's decoders: the header and
    /// frames (the coordinator's side) and the answer (the worker's).
    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(crate::test_rng::proptest_config(3000))]

            #[test]
            fn uploads_round_trip(partition: u32, attempt: u64, data in prop::collection::vec(any::<u8>(), 0..5000), frame in 1usize..3000) {
                prop_assert_eq!(take_all(&wire(partition, attempt, &data, frame)).unwrap(), ((partition, attempt), data));
            }

            #[test]
            fn cut_uploads_are_cut_and_damaged_ones_refused(
                data in prop::collection::vec(any::<u8>(), 0..2000),
                frame in 1usize..700,
                cut in any::<prop::sample::Index>(),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let whole = wire(7, 9, &data, frame);
                let taken = take_all(&whole[..cut.index(whole.len())]);
                prop_assert_eq!(taken.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
                let at = flip.index(whole.len());
                let mut damaged = whole.clone();
                damaged[at] ^= 1 << bit;
                let taken = take_all(&damaged);
                // The header carries no checksum: a flip there names another attempt.
                if at >= 12 {
                    let kind = taken.unwrap_err().kind();
                    prop_assert!(matches!(kind, io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof), "{:?}", kind);
                }
            }

            #[test]
            fn garbage_uploads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
                if let Ok((_, data)) = take_all(&bytes) {
                    prop_assert!(data.len() < bytes.len());
                }
            }

            #[test]
            fn garbage_frames_never_panic(frames in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..64)), 0..8)) {
                // Plausible framing: lengths of any size, followed by too few bytes.
                let mut bytes = vec![0; 12];
                for (len, data) in frames {
                    bytes.extend_from_slice(&len.to_le_bytes());
                    bytes.extend_from_slice(&data);
                }
                if let Err(e) = take_all(&bytes) {
                    prop_assert!(matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof), "{}", e);
                }
            }

            #[test]
            fn any_answer_is_read_or_refused(first: u8, rest in prop::collection::vec(any::<u8>(), 0..300)) {
                let answer = read_answer(&mut &rest[..], first);
                prop_assert_eq!(answer.is_ok(), first == 0);
            }
        }
    }
}
