//! Serving byte ranges of files to the job's other processes, and fetching
//! them: how map output reaches reducers on other machines (Google
//! MapReduce's section 3.3, Hadoop's shuffle handler), and how a worker
//! without the inputs or the app gets them from the coordinator. (A
//! reduce's output goes the other way: [`crate::upload`].)
//!
//! A connection starts with the [handshake](crate::handshake) (which
//! encrypts it when the job has a secret), then one
//! byte naming the service ([`SERVICE_FILES`] here; the coordinator's port
//! also takes [`SERVICE_RPC`]), then any number of requests, one at a time:
//!
//! ```text
//! client                                 server
//!   | kind u8, a u64, b u64, c u64 -->     | (see FileRequest::encode)
//!   | <-- 0, begin u64, len u64, bytes, crc32 u32      the range, streamed
//!   | <-- 1, len u16, message                          why not (no such file...)
//! ```
//!
//! The server resolves a request to a file and a byte range through its
//! [`Catalog`], so it serves only what its process made or was given, never
//! a path a client names. The CRC-32 of the bytes ends every answer: a
//! range damaged on the way is refetched, not merged.
//!
//! Neither side trusts the other's numbers further than it must. A client
//! takes only the range it asked for ([`FileRequest::admits`]: a map's run
//! must come with exactly the length the coordinator recorded for it) and
//! refuses any other answer before reading or storing a byte of it; it
//! reserves memory for no more than it asked for. A server bounds every
//! write by [`STALL_LIMIT`], so a client that asks and never reads cannot
//! hold a connection (and its descriptors) forever.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::accept::IdleLimited;
use crate::handshake::{self, HandshakeError, Identity, RefusalLog, Secret};
use crate::mapped_input::{MappedInput, ALIGNMENT};
use crate::secure::{Secured, Stream};

/// The byte that asks for the coordinator's RPC service after the handshake.
pub const SERVICE_RPC: u8 = b'R';
/// The byte that asks for the file service after the handshake.
pub const SERVICE_FILES: u8 = b'F';

/// Longest a transfer may wait for the other side's next bytes: a peer
/// that stops (crashed, cut off) fails the fetch instead of holding it.
pub const STALL_LIMIT: Duration = Duration::from_secs(15);

/// Longest a fetch waits for a connection: a host cut off from the network
/// does not answer at all.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// Bytes checksummed (and sent) per step when serving a file, and
/// received per write when fetching into a file.
const CHUNK: usize = 1 << 20;

/// Most memory reserved ahead for an answer whose length the request does
/// not bound (a split's last line, the app): past it, memory grows with
/// the bytes that actually arrive.
const UNBOUNDED_RESERVE: usize = CHUNK;

/// Most memory reserved ahead of an answer's bytes, however long the range
/// asked for (a run fetched into memory is one allocation up to this).
const RESERVE_AHEAD_LIMIT: usize = 64 << 20;

/// Longest refusal message a server sends: one line for a log.
const MAX_REFUSAL_BYTES: usize = 1024;

/// What a client asks a server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRequest {
    /// `len` bytes from `offset` of the output file of map `attempt` (its
    /// runs); `len` [`u64::MAX`] means to the end.
    AttemptOutput {
        /// The attempt whose output it is.
        attempt: u64,
        /// First byte.
        offset: u64,
        /// Bytes wanted.
        len: u64,
    },
    /// The lines a map task's split owns, of input number `input`: those
    /// that start in `start..end` (`end` [`u64::MAX`]: to the end of the
    /// file), through the end of the last one.
    InputSplit {
        /// The input's index in the job.
        input: u32,
        /// The split's first byte.
        start: u64,
        /// The end of the split.
        end: u64,
    },
    /// Up to `len` bytes at `offset` of input number `input`, as they are
    /// (what an app's constructor reads to sample its inputs).
    InputRange {
        /// The input's index in the job.
        input: u32,
        /// First byte.
        offset: u64,
        /// Bytes wanted (fewer at the end of the file).
        len: u64,
    },
    /// The job's app plugin, of `size` bytes (as the job describes it).
    Plugin {
        /// Its size: an answer of any other length is refused unread.
        size: u64,
    },
    /// File number `index` of those shipped with the job (`--files`), of
    /// `size` bytes.
    Shipped {
        /// The file's index in the job's list.
        index: u32,
        /// Its size: an answer of any other length is refused unread.
        size: u64,
    },
}

impl FileRequest {
    const SIZE: usize = 1 + 3 * 8;

    fn encode(&self) -> [u8; Self::SIZE] {
        let (kind, a, b, c) = match *self {
            FileRequest::AttemptOutput { attempt, offset, len } => (1, attempt, offset, len),
            FileRequest::InputSplit { input, start, end } => (2, u64::from(input), start, end),
            FileRequest::Plugin { size } => (3, size, 0, 0),
            FileRequest::InputRange { input, offset, len } => (4, u64::from(input), offset, len),
            FileRequest::Shipped { index, size } => (5, u64::from(index), size, 0),
        };
        let fields = std::iter::once(kind).chain([a, b, c].into_iter().flat_map(u64::to_le_bytes));
        let mut bytes = [0; Self::SIZE];
        for (slot, byte) in bytes.iter_mut().zip(fields) {
            *slot = byte;
        }
        bytes
    }

    /// Whether an answer announcing `len` bytes from `offset` is one this
    /// request may get; any other is refused before a byte of it is read.
    pub fn admits(&self, offset: u64, len: u64) -> bool {
        match *self {
            // A run's range is the coordinator's record: exactly it.
            FileRequest::AttemptOutput { offset: asked, len: asked_len, .. } => offset == asked && (asked_len == u64::MAX || len == asked_len),
            // Fewer bytes at the end of the file (none past it).
            FileRequest::InputRange { offset: asked, len: asked_len, .. } => len <= asked_len && (offset == asked || len == 0),
            // The split's lines begin at or after its start, and the last
            // runs past its end as far as it goes; a split in which no line
            // starts (inside a longer one) owns nothing, from the next line.
            FileRequest::InputSplit { start, end, .. } => offset >= start && (end == u64::MAX || offset <= end || len == 0),
            // The whole file, exactly as large as the job says.
            FileRequest::Plugin { size } | FileRequest::Shipped { size, .. } => offset == 0 && len == size,
        }
    }

    /// Bytes worth reserving for an answer of `len` bytes: all of them when
    /// the request bounds them (up to [`RESERVE_AHEAD_LIMIT`]), else no
    /// more than [`UNBOUNDED_RESERVE`]. What arrives beyond is stored as it
    /// arrives, not on the peer's word.
    fn reserve_for(&self, len: u64) -> usize {
        let bound = match *self {
            FileRequest::AttemptOutput { len: asked, .. } | FileRequest::InputRange { len: asked, .. } if asked != u64::MAX => asked,
            FileRequest::InputSplit { start, end, .. } if end != u64::MAX => end.saturating_sub(start),
            FileRequest::Plugin { size } | FileRequest::Shipped { size, .. } => size,
            _ => UNBOUNDED_RESERVE as u64,
        };
        usize::try_from(len.min(bound)).map_or(RESERVE_AHEAD_LIMIT, |bytes| bytes.min(RESERVE_AHEAD_LIMIT))
    }

    fn decode(bytes: &[u8; Self::SIZE]) -> Option<FileRequest> {
        let [kind, words @ ..] = bytes;
        let mut words = words.chunks_exact(8).map(|word| word.try_into().map(u64::from_le_bytes));
        let (a, b, c) = (words.next()?.ok()?, words.next()?.ok()?, words.next()?.ok()?);
        match kind {
            1 => Some(FileRequest::AttemptOutput { attempt: a, offset: b, len: c }),
            2 => Some(FileRequest::InputSplit { input: u32::try_from(a).ok()?, start: b, end: c }),
            3 => Some(FileRequest::Plugin { size: a }),
            4 => Some(FileRequest::InputRange { input: u32::try_from(a).ok()?, offset: b, len: c }),
            5 => Some(FileRequest::Shipped { index: u32::try_from(a).ok()?, size: b }),
            _ => None,
        }
    }
}

/// A byte range of a file a server will send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRange {
    /// The file.
    pub path: PathBuf,
    /// Its first byte to send.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

/// What a server serves: requests resolved to byte ranges of its files.
/// Called off the runtime (it may read the file, e.g. to find line ends).
pub trait Catalog: Send + Sync + 'static {
    /// The range `request` names, or why the server will not send it.
    fn resolve(&self, request: &FileRequest) -> Result<FileRange, String>;
}

/// Serves the requests of one connection, after its handshake and service
/// byte, until the client closes it.
pub async fn serve_requests(mut stream: IdleLimited<Stream>, catalog: Arc<dyn Catalog>) -> io::Result<()> {
    loop {
        let mut request = [0; FileRequest::SIZE];
        match stream.read_exact(&mut request).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let Some(request) = FileRequest::decode(&request) else {
            return refuse(&mut stream, "unknown request").await;
        };
        let catalog = catalog.clone();
        let resolved = tokio::task::spawn_blocking(move || catalog.resolve(&request)).await.unwrap_or_else(|e| Err(e.to_string()));
        match resolved {
            Ok(range) => send_range(&mut stream, &range).await?,
            Err(why) => refuse(&mut stream, &why).await?,
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, why: &str) -> io::Result<()> {
    write_patiently(stream, &refusal(why)).await
}

/// A refusal's bytes: 1, the length, and `why` cut to [`MAX_REFUSAL_BYTES`].
fn refusal(why: &str) -> Vec<u8> {
    let why = super::at_most(why.as_bytes(), MAX_REFUSAL_BYTES);
    let mut reply = vec![1];
    reply.extend_from_slice(&(why.len() as u16).to_le_bytes());
    reply.extend_from_slice(why);
    reply
}

/// Writes and flushes `bytes`, failing with `TimedOut` if the client does
/// not take them within [`STALL_LIMIT`]: one that asks and never reads
/// would otherwise hold the connection forever (reads alone are timed).
async fn write_patiently<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    patient(STALL_LIMIT, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
}

async fn send_range(stream: &mut IdleLimited<Stream>, range: &FileRange) -> io::Result<()> {
    let opened = std::fs::File::open(&range.path).and_then(|file| Ok((file.metadata()?.len(), file)));
    let (size, file) = match opened {
        Ok(opened) => opened,
        Err(e) => return refuse(stream, &format!("cannot open it: {e}")).await,
    };
    if range.offset.checked_add(range.len).is_none_or(|end| end > size) {
        return refuse(stream, &format!("bytes {}+{} are not in the file ({size} bytes)", range.offset, range.len)).await;
    }
    let mut header = vec![0];
    header.extend_from_slice(&range.offset.to_le_bytes());
    header.extend_from_slice(&range.len.to_le_bytes());
    write_patiently(stream, &header).await?;
    // On a plain connection the bytes go from the page cache to the
    // connection by sendfile(2), never through this process; a thread
    // checksums each chunk first (which also brings it into the cache, so
    // that sendfile does not wait for the disk on the runtime's thread).
    // An encrypted one needs the bytes here: the thread reads them.
    let file = Arc::new(file);
    let mut ahead = checksum_ahead(file.clone(), range.offset, range.len, stream.get_ref().is_encrypted());
    let mut sent = 0;
    loop {
        // The file shrank since it was measured: the client sees a broken
        // transfer, never a short one taken for whole.
        match ahead.recv().await.unwrap_or_else(|| Err(io::ErrorKind::UnexpectedEof.into()))? {
            Ahead::Checked(len) => {
                let Secured::Plain(socket) = stream.get_ref() else {
                    return Err(io::Error::other("unread bytes for an encrypted connection"));
                };
                send_file(socket, &file, range.offset + sent, len).await?;
                sent += len;
            }
            Ahead::Read(bytes) => write_patiently(stream, &bytes).await?,
            Ahead::Done(crc) => return write_patiently(stream, &crc.to_le_bytes()).await,
        }
    }
}

/// What the checksumming thread tells the sender.
enum Ahead {
    /// The next `len` bytes are checksummed (and in the page cache).
    Checked(u64),
    /// The next bytes, checksummed.
    Read(Vec<u8>),
    /// Every byte is: their CRC-32.
    Done(u32),
}

/// Checksums `len` bytes at `offset` of `file` on a blocking thread, chunk
/// by chunk, at most a few chunks ahead of the sender; stops early if the
/// sender is gone. Reads through a mapping (no copy) where it can, unless
/// the sender wants the bytes (`read`).
fn checksum_ahead(file: Arc<std::fs::File>, offset: u64, len: u64, read: bool) -> tokio::sync::mpsc::Receiver<io::Result<Ahead>> {
    let (ahead, receiver) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut crc = crc32fast::Hasher::new();
        let (mut at, end) = (offset, offset + len);
        while at < end {
            // Chunks end on multiples of CHUNK, so that only the first
            // mapping starts below its bytes.
            let next = end.min((at / CHUNK as u64 + 1) * CHUNK as u64);
            let checked = match read {
                true => read_chunk(&file, at, next - at, &mut crc).map(Ahead::Read),
                false => checksum_chunk(&file, at, next - at, &mut crc).map(|()| Ahead::Checked(next - at)),
            };
            let failed = checked.is_err();
            if ahead.blocking_send(checked).is_err() || failed {
                return;
            }
            at = next;
        }
        let _ = ahead.blocking_send(Ok(Ahead::Done(crc.finalize())));
    });
    receiver
}

/// Adds `len` bytes at `at` of `file` to `crc`: mapped, or read into
/// memory if they cannot be. Fails if the file is shorter than that.
fn checksum_chunk(file: &std::fs::File, at: u64, len: u64, crc: &mut crc32fast::Hasher) -> io::Result<()> {
    let aligned = at - at % ALIGNMENT;
    let skip = (at - aligned) as usize;
    if let Some(mapped) = MappedInput::open(file, aligned, len + skip as u64) {
        crc.update(mapped.bytes().get(skip..).unwrap_or_default());
        if mapped.changed() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was sent"));
        }
        return Ok(());
    }
    read_chunk(file, at, len, crc).map(drop)
}

/// Reads `len` bytes at `at` of `file`, adding them to `crc`. Fails if the
/// file is shorter than that.
fn read_chunk(file: &std::fs::File, at: u64, len: u64, crc: &mut crc32fast::Hasher) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, at)?;
    crc.update(&bytes);
    Ok(bytes)
}

/// Sends `len` bytes at `offset` of `file` to `socket` with sendfile(2).
async fn send_file(socket: &TcpStream, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut position = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut left = len;
    while left > 0 {
        tokio::time::timeout(STALL_LIMIT, socket.writable()).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let count = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the call, and
            // `position` is a valid offset the kernel advances.
            let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut position, count) };
            usize::try_from(sent).map_err(|_| io::Error::last_os_error())
        });
        match sent {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was sent")),
            Ok(sent) => left -= sent as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs a file server on `listener`: every connection must pass the
/// handshake with `secret` and ask for [`SERVICE_FILES`]. Runs until the
/// listener fails; dropping the future closes every connection.
pub async fn run_server(listener: TcpListener, secret: Option<Secret>, catalog: Arc<dyn Catalog>) {
    let refusals = Arc::new(std::sync::Mutex::new(RefusalLog::default()));
    crate::accept::incoming(listener, crate::accept::connection_cap())
        .for_each_concurrent(None, |(stream, permit)| {
            let (secret, catalog, refusals) = (secret.clone(), catalog.clone(), refusals.clone());
            async move {
                let peer = stream.peer_addr().map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
                let stream = match handshake::accept(stream, secret.as_ref(), |_| Ok(())).await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        refusals.lock().unwrap_or_else(|p| p.into_inner()).refused(&peer, &e);
                        return;
                    }
                };
                let mut stream = IdleLimited::new(stream, STALL_LIMIT * 2);
                match stream.read_u8().await {
                    Ok(SERVICE_FILES) => {
                        if let Err(e) = serve_requests(stream, catalog).await {
                            tracing::debug!("serving files to {peer}: {e}");
                        }
                    }
                    _ => tracing::debug!("{peer} asked for a service other than files"),
                }
                drop(permit);
            }
        })
        .await;
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connection, or it broke, or the other side stopped sending.
    #[error("{0}")]
    Network(#[from] io::Error),
    /// The handshake failed (a refusal, or a server that is not ours).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The server answered that it will not send the range.
    #[error("the server has no such file: {0}")]
    NotServed(String),
    /// The bytes arrived damaged.
    #[error("the data arrived damaged (checksum mismatch)")]
    Corrupt,
    /// The server broke the protocol.
    #[error("the server's answer makes no sense")]
    Garbled,
    /// The server announced a range other than the one asked for (say, a
    /// run longer than the coordinator recorded): refused unread.
    #[error("the server announced bytes {offset}+{len}, not what was asked for ({asked:?})")]
    WrongRange {
        /// What was asked for.
        asked: FileRequest,
        /// The first byte the server announced.
        offset: u64,
        /// How many bytes it announced.
        len: u64,
    },
}

impl FetchError {
    /// Whether fetching again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Network(_) | FetchError::Corrupt => true,
            FetchError::Handshake(e) => e.is_transient(),
            FetchError::NotServed(_) | FetchError::Garbled | FetchError::WrongRange { .. } => false,
        }
    }
}

/// Where fetched bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The file offset of the first byte.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

/// Connections kept open per server for the next fetch, at most.
const IDLE_PER_SERVER: usize = 4;
/// How long a connection is kept for reuse: well within the server's idle
/// limit, so that it is not closed under a request.
const IDLE_REUSE: Duration = Duration::from_secs(5);

/// Connections kept for reuse, by server, each with when it was last used.
type IdleConnections = std::collections::HashMap<String, Vec<(Stream, std::time::Instant)>>;

/// Fetches ranges from file servers as one process of the job. Clones
/// share the connections kept for reuse: a handshake per fetch would cost
/// more than the fetch when there are many small ones (an app sampling its
/// inputs, a reduce reading many small runs).
#[derive(Debug, Clone)]
pub struct Fetcher {
    secret: Option<Secret>,
    identity: Identity,
    /// How long a fetch waits for the server's next bytes (or to connect).
    stall_limit: Duration,
    idle: Arc<std::sync::Mutex<IdleConnections>>,
}

impl Fetcher {
    /// A fetcher that shows `secret` and calls itself `identity`.
    pub fn new(secret: Option<Secret>, identity: Identity) -> Fetcher {
        Fetcher { secret, identity, stall_limit: STALL_LIMIT, idle: Arc::default() }
    }

    /// This fetcher, giving up on a server that sends nothing (or does not
    /// answer a connection) for `limit` rather than [`STALL_LIMIT`]: a
    /// reduce must see a frozen server fail well within its task timeout.
    pub fn with_stall_limit(mut self, limit: Duration) -> Fetcher {
        self.stall_limit = limit.min(STALL_LIMIT);
        self
    }

    /// Fetches what `request` names from the server at `server` into
    /// `sink`. On an error, `sink` may hold part of it.
    pub async fn fetch<W: AsyncWrite + Unpin>(&self, server: &str, request: FileRequest, sink: &mut W) -> Result<Fetched, FetchError> {
        loop {
            let (mut stream, reused) = self.ask(server, request).await?;
            let result = receive(&mut stream, request, sink, self.stall_limit).await;
            if let Some(result) = self.finish(server, stream, reused, result) {
                return result;
            }
        }
    }

    /// [`Fetcher::fetch`] into memory: appended to `out`, straight from the
    /// connection (one copy fewer than through a writer). `progress`, if
    /// given, is ticked for every piece received.
    pub async fn fetch_to_vec(
        &self,
        server: &str,
        request: FileRequest,
        out: &mut Vec<u8>,
        progress: Option<&AtomicU64>,
    ) -> Result<Fetched, FetchError> {
        loop {
            let (mut stream, reused) = self.ask(server, request).await?;
            let result = receive_to_vec(&mut stream, request, out, progress, self.stall_limit).await;
            if let Some(result) = self.finish(server, stream, reused, result) {
                return result;
            }
        }
    }

    /// Keeps `stream` for the next fetch if its answer was read whole, and
    /// returns `result`; `None` means a kept connection had been closed by
    /// the server before the answer began: fetch again on a new one.
    fn finish(&self, server: &str, stream: Stream, reused: bool, result: Result<Fetched, FetchError>) -> Option<Result<Fetched, FetchError>> {
        match &result {
            Ok(_) | Err(FetchError::NotServed(_)) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let kept = idle.entry(server.to_owned()).or_default();
                if kept.len() < IDLE_PER_SERVER {
                    kept.push((stream, std::time::Instant::now()));
                }
            }
            Err(FetchError::Network(e)) if reused && e.kind() != io::ErrorKind::TimedOut => return None,
            Err(_) => {}
        }
        Some(result)
    }

    /// A connection to `server` (kept from an earlier fetch, or new: then
    /// with the handshake run and the file service asked for) with
    /// `request` sent; and whether it was kept.
    async fn ask(&self, server: &str, request: FileRequest) -> Result<(Stream, bool), FetchError> {
        let kept = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let kept = idle.get_mut(server).map(std::mem::take).unwrap_or_default();
            let (mut fresh, _stale): (Vec<_>, Vec<_>) = kept.into_iter().partition(|(_, at)| at.elapsed() < IDLE_REUSE);
            let one = fresh.pop().map(|(stream, _)| stream);
            if !fresh.is_empty() {
                idle.insert(server.to_owned(), fresh);
            }
            one
        };
        if let Some(mut stream) = kept {
            if send_request(&mut stream, request).await.is_ok() {
                return Ok((stream, true));
            }
        }
        Ok((self.connect(server, request).await?, false))
    }

    /// A new connection to `server` for `service`, as this fetcher's
    /// process (with its secret and identity).
    pub async fn dial(&self, server: &str, service: u8) -> Result<Stream, HandshakeError> {
        handshake::dial(server, self.secret.as_ref(), &self.identity, service, Some(CONNECT_LIMIT.min(self.stall_limit))).await
    }

    /// A new connection to `server`, with `request` sent.
    async fn connect(&self, server: &str, request: FileRequest) -> Result<Stream, FetchError> {
        let mut stream = self.dial(server, SERVICE_FILES).await?;
        send_request(&mut stream, request).await?;
        Ok(stream)
    }
}

/// Sends `request` (flushed: an encrypted stream holds it until then).
async fn send_request(stream: &mut Stream, request: FileRequest) -> io::Result<()> {
    stream.write_all(&request.encode()).await?;
    stream.flush().await
}

/// Reads one answer to `request` from `stream`, appending it to `out`.
async fn receive_to_vec<R: AsyncRead + Unpin>(
    stream: &mut R,
    request: FileRequest,
    out: &mut Vec<u8>,
    progress: Option<&AtomicU64>,
    limit: Duration,
) -> Result<Fetched, FetchError> {
    {
        let (offset, len) = read_header(stream, request, limit).await?;
        let start = out.len();
        out.reserve(request.reserve_for(len));
        while ((out.len() - start) as u64) < len {
            let left = len - (out.len() - start) as u64;
            let n = patient(limit, (&mut *stream).take(left).read_buf(out)).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            if let Some(progress) = progress {
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }
        verify_trailer(stream, crc32fast::hash(out.get(start..).unwrap_or_default()), limit).await?;
        Ok(Fetched { offset, len })
    }
}

/// Reads the start of an answer to `request`: the range's offset and
/// length, if `request` admits them; or why the server will not send it.
async fn read_header<R: AsyncRead + Unpin>(stream: &mut R, request: FileRequest, limit: Duration) -> Result<(u64, u64), FetchError> {
    match patient(limit, stream.read_u8()).await? {
        0 => {}
        1 => {
            let len = patient(limit, stream.read_u16_le()).await?;
            let mut why = vec![0; usize::from(len)];
            patient(limit, stream.read_exact(&mut why)).await?;
            return Err(FetchError::NotServed(String::from_utf8_lossy(&why).into_owned()));
        }
        _ => return Err(FetchError::Garbled),
    }
    let offset = patient(limit, stream.read_u64_le()).await?;
    let len = patient(limit, stream.read_u64_le()).await?;
    if !request.admits(offset, len) {
        return Err(FetchError::WrongRange { asked: request, offset, len });
    }
    Ok((offset, len))
}

/// Reads the CRC-32 that ends an answer and compares it with `crc`'s.
async fn verify_trailer<R: AsyncRead + Unpin>(stream: &mut R, crc: u32, limit: Duration) -> Result<(), FetchError> {
    let expected = patient(limit, stream.read_u32_le()).await?;
    if crc != expected {
        return Err(FetchError::Corrupt);
    }
    Ok(())
}

/// Reads one answer to `request` from `stream` into `sink`, waiting at
/// most `limit` for each piece.
async fn receive<R, W>(stream: &mut R, request: FileRequest, sink: &mut W, limit: Duration) -> Result<Fetched, FetchError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (offset, len) = read_header(stream, request, limit).await?;
    let mut crc = crc32fast::Hasher::new();
    let mut left = len;
    // At most a chunk, whatever the length announced.
    let mut chunk = Vec::with_capacity(usize::try_from(len).map_or(CHUNK, |len| len.min(CHUNK)));
    while left > 0 {
        // A whole chunk per write: a socket read gives tens of KiB, and a
        // write to a file is a trip to a blocking thread.
        let want = left.min(CHUNK as u64);
        chunk.clear();
        while (chunk.len() as u64) < want {
            let n = patient(limit, (&mut *stream).take(want - chunk.len() as u64).read_buf(&mut chunk)).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        crc.update(&chunk);
        sink.write_all(&chunk).await?;
        left -= want;
    }
    verify_trailer(stream, crc.finalize(), limit).await?;
    sink.flush().await?;
    Ok(Fetched { offset, len })
}

/// `io`, failed with `TimedOut` if it takes longer than `limit`.
async fn patient<T>(limit: Duration, io: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(limit, io).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no data for {:.1} s", limit.as_secs_f64())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves the files of a directory by attempt number: `out-<attempt>`.
    struct Dir(PathBuf);

    impl Catalog for Dir {
        fn resolve(&self, request: &FileRequest) -> Result<FileRange, String> {
            let FileRequest::AttemptOutput { attempt, offset, len } = *request else { return Err("not here".into()) };
            let path = self.0.join(format!("out-{attempt}"));
            let size = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
            Ok(FileRange { path, offset, len: if len == u64::MAX { size - offset } else { len } })
        }
    }

    async fn server(dir: &std::path::Path, secret: Option<Secret>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(run_server(listener, secret, Arc::new(Dir(dir.to_owned()))));
        addr
    }

    fn secret(text: &str) -> Option<Secret> {
        Some(Secret::from_bytes(text.as_bytes()).unwrap())
    }

    #[tokio::test]
    async fn ranges_arrive_whole_and_missing_files_are_named() {
        // Encrypted (the bytes pass through the server), authenticated
        // only, and plain (both sent by sendfile).
        for key in [secret("0123456789abcdef"), secret("0123456789abcdef").map(Secret::without_tls), None] {
            let dir = tempfile::tempdir().unwrap();
            let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(dir.path().join("out-5"), &data).unwrap();
            let addr = server(dir.path(), key.clone()).await;
            let fetcher = Fetcher::new(key, Identity::new("reducer".into()));
            let mut got = Vec::new();
            let fetched = fetcher.fetch(&addr, FileRequest::AttemptOutput { attempt: 5, offset: 1000, len: 700_000 }, &mut got).await.unwrap();
            assert_eq!(fetched, Fetched { offset: 1000, len: 700_000 });
            assert_eq!(got, &data[1000..701_000]);
            let mut got = b"kept".to_vec();
            let progress = AtomicU64::new(0);
            fetcher
                .fetch_to_vec(&addr, FileRequest::AttemptOutput { attempt: 5, offset: 0, len: u64::MAX }, &mut got, Some(&progress))
                .await
                .unwrap();
            assert!(progress.load(Ordering::Relaxed) > 0, "a fetch into memory shows progress");
            assert_eq!(&got[..4], b"kept");
            assert_eq!(&got[4..], data);
            let missing = fetcher.fetch(&addr, FileRequest::AttemptOutput { attempt: 6, offset: 0, len: 1 }, &mut Vec::new()).await;
            assert!(matches!(&missing, Err(FetchError::NotServed(_))), "{missing:?}");
            // Several chunks, from an offset that is not a page's.
            let large: Vec<u8> = (0..(3 * CHUNK + 12_345) as u32).map(|i| (i * 13 % 253) as u8).collect();
            std::fs::write(dir.path().join("out-7"), &large).unwrap();
            let mut got = Vec::new();
            fetcher.fetch(&addr, FileRequest::AttemptOutput { attempt: 7, offset: 4097, len: u64::MAX }, &mut got).await.unwrap();
            assert!(got == large[4097..], "a multi-chunk range arrived changed");
            let beyond = fetcher.fetch(&addr, FileRequest::AttemptOutput { attempt: 5, offset: 999_999, len: 2 }, &mut Vec::new()).await;
            assert!(matches!(&beyond, Err(FetchError::NotServed(why)) if why.contains("not in the file")), "{beyond:?}");
            assert!(!beyond.unwrap_err().is_transient());
        }
    }

    #[tokio::test]
    async fn a_fetch_with_the_wrong_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("out-1"), b"secret data").unwrap();
        let addr = server(dir.path(), secret("0123456789abcdef")).await;
        let stranger = Fetcher::new(secret("another secret entirely"), Identity::new("stranger".into()));
        let mut got = Vec::new();
        let refused = stranger.fetch(&addr, FileRequest::AttemptOutput { attempt: 1, offset: 0, len: u64::MAX }, &mut got).await;
        assert!(matches!(&refused, Err(FetchError::Handshake(HandshakeError::Refused(_)))), "{refused:?}");
        assert!(got.is_empty());
        let anonymous = Fetcher::new(None, Identity::new("anonymous".into()));
        let refused = anonymous.fetch(&addr, FileRequest::AttemptOutput { attempt: 1, offset: 0, len: u64::MAX }, &mut got).await;
        assert!(matches!(&refused, Err(FetchError::Handshake(HandshakeError::SecretRequired))), "{refused:?}");
    }

    #[tokio::test]
    async fn damaged_bytes_are_caught_by_the_checksum() {
        let mut answer = vec![0];
        answer.extend_from_slice(&0u64.to_le_bytes());
        answer.extend_from_slice(&5u64.to_le_bytes());
        answer.extend_from_slice(b"hellp");
        answer.extend_from_slice(&crc32fast::hash(b"hello").to_le_bytes());
        let request = FileRequest::AttemptOutput { attempt: 1, offset: 0, len: 5 };
        let result = receive(&mut &answer[..], request, &mut Vec::new(), STALL_LIMIT).await;
        assert!(matches!(result, Err(FetchError::Corrupt)), "{result:?}");
        // Cut short: a broken transfer, not a short one.
        let result = receive(&mut &answer[..12], request, &mut Vec::new(), STALL_LIMIT).await;
        assert!(matches!(result, Err(FetchError::Network(_))), "{result:?}");
    }

    #[test]
    fn requests_round_trip() {
        for request in [
            FileRequest::AttemptOutput { attempt: 77, offset: 3, len: u64::MAX },
            FileRequest::InputSplit { input: 4, start: 1 << 40, end: u64::MAX },
            FileRequest::InputRange { input: 2, offset: 5, len: 1 << 20 },
            FileRequest::Plugin { size: 0 },
            FileRequest::Shipped { index: 3, size: 1 << 33 },
        ] {
            assert_eq!(FileRequest::decode(&request.encode()), Some(request));
        }
        assert_eq!(FileRequest::decode(&[9; FileRequest::SIZE]), None);
    }

    /// An answer as a server sends it: `len` bytes from `offset`, then
    /// the CRC-32 of `bytes` (which may differ from what is announced).
    fn answer(offset: u64, len: u64, bytes: &[u8]) -> Vec<u8> {
        let mut wire = vec![0];
        wire.extend_from_slice(&offset.to_le_bytes());
        wire.extend_from_slice(&len.to_le_bytes());
        wire.extend_from_slice(bytes);
        wire.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        wire
    }

    /// A hostile server: admits anyone, then answers every request with
    /// `wire`, whatever was asked.
    async fn hostile_server(wire: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let wire = wire.clone();
                tokio::spawn(async move {
                    handshake::accept(&mut stream, None, |_| Ok(())).await.unwrap();
                    let mut asked = [0; 1 + FileRequest::SIZE];
                    stream.read_exact(&mut asked).await.unwrap();
                    let _ = stream.write_all(&wire).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_answer_longer_than_the_recorded_run_is_refused_before_a_byte_is_stored() {
        let request = FileRequest::AttemptOutput { attempt: 3, offset: 100, len: 10 };
        let fetcher = Fetcher::new(None, Identity::new("reducer".into()));
        // Announces 1 EiB (or one byte more, or another offset) and sends it.
        for (offset, len) in [(100, 1 << 60), (100, 11), (100, 9), (0, 10)] {
            let addr = hostile_server(answer(offset, len, &[7; 11])).await;
            let mut file = Vec::new();
            let fetched = fetcher.fetch(&addr, request, &mut file).await;
            assert!(matches!(fetched, Err(FetchError::WrongRange { offset: o, len: l, .. }) if o == offset && l == len), "{fetched:?}");
            assert!(file.is_empty(), "nothing is written");
            assert!(!fetched.unwrap_err().is_transient(), "a lying server is not asked again");
            let mut memory = Vec::new();
            let fetched = fetcher.fetch_to_vec(&addr, request, &mut memory, None).await;
            assert!(matches!(fetched, Err(FetchError::WrongRange { .. })), "{fetched:?}");
            assert_eq!(memory.capacity(), 0, "nothing is allocated");
        }
        // The recorded length itself is taken.
        let addr = hostile_server(answer(100, 10, b"0123456789")).await;
        let mut memory = Vec::new();
        assert_eq!(fetcher.fetch_to_vec(&addr, request, &mut memory, None).await.unwrap(), Fetched { offset: 100, len: 10 });
        assert_eq!(memory, b"0123456789");
    }

    #[tokio::test]
    async fn an_unbounded_answer_is_stored_as_it_arrives_not_as_announced() {
        // A split to the end of its file has no length in the request: a
        // server may announce 1 EiB, but memory grows only with what it
        // sends before it stops.
        let request = FileRequest::InputSplit { input: 0, start: 0, end: u64::MAX };
        let mut wire = answer(0, 1 << 60, b"");
        wire.truncate(17);
        wire.extend_from_slice(&[1; 5000]);
        let addr = hostile_server(wire).await;
        let fetcher = Fetcher::new(None, Identity::new("worker".into())).with_stall_limit(Duration::from_secs(2));
        let mut memory = Vec::new();
        let fetched = fetcher.fetch_to_vec(&addr, request, &mut memory, None).await;
        assert!(matches!(fetched, Err(FetchError::Network(_))), "{fetched:?}");
        assert!(memory.capacity() <= 2 * UNBOUNDED_RESERVE, "reserved {} bytes", memory.capacity());
        // A refusal's reason is bounded by its u16 length.
        let addr = hostile_server(vec![1, 0xff, 0xff, b'x']).await;
        let fetched = fetcher.fetch_to_vec(&addr, request, &mut memory, None).await;
        assert!(matches!(fetched, Err(FetchError::Network(_))), "{fetched:?}");
    }

    #[test]
    fn what_each_request_admits() {
        let run = FileRequest::AttemptOutput { attempt: 1, offset: 8, len: 100 };
        assert!(run.admits(8, 100) && !run.admits(8, 101) && !run.admits(8, 99) && !run.admits(0, 100));
        let to_end = FileRequest::AttemptOutput { attempt: 1, offset: 8, len: u64::MAX };
        assert!(to_end.admits(8, 5) && !to_end.admits(9, 5));
        let range = FileRequest::InputRange { input: 0, offset: 10, len: 50 };
        assert!(range.admits(10, 50) && range.admits(10, 3) && range.admits(7, 0) && !range.admits(10, 51) && !range.admits(11, 3));
        let split = FileRequest::InputSplit { input: 0, start: 100, end: 200 };
        assert!(split.admits(100, 500) && split.admits(150, 0) && split.admits(900, 0) && !split.admits(99, 1) && !split.admits(201, 1));
        let app = FileRequest::Plugin { size: 1 << 40 };
        assert!(app.admits(0, 1 << 40) && !app.admits(0, (1 << 40) + 1) && !app.admits(1, 1));
        let shipped = FileRequest::Shipped { index: 2, size: 10 };
        assert!(shipped.admits(0, 10) && !shipped.admits(0, 1 << 60) && !shipped.admits(0, 9));
        assert_eq!(run.reserve_for(100), 100);
        assert_eq!(split.reserve_for(1 << 60), 100);
        assert_eq!(FileRequest::InputSplit { input: 0, start: 0, end: u64::MAX }.reserve_for(1 << 60), UNBOUNDED_RESERVE);
        assert_eq!(split.reserve_for(1 << 60), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_cut_off() {
        // A pipe of 64 bytes that nobody reads: the refusal cannot be written.
        let (mut near, _far) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let refused = refuse(&mut near, &"x".repeat(10_000)).await;
        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), STALL_LIMIT);
        assert_eq!(refusal(&"y".repeat(100_000)).len(), 3 + MAX_REFUSAL_BYTES, "a refusal is one line, not 64 KiB");
    }

    /// Fuzz-style properties of the decoders of this file's wire format:
    /// requests (the server's side), answers (the client's side).
    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn request() -> impl Strategy<Value = FileRequest> {
            prop_oneof![
                (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(attempt, offset, len)| FileRequest::AttemptOutput { attempt, offset, len }),
                (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(input, start, end)| FileRequest::InputSplit { input, start, end }),
                (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(input, offset, len)| FileRequest::InputRange { input, offset, len }),
                any::<u64>().prop_map(|size| FileRequest::Plugin { size }),
                (any::<u32>(), any::<u64>()).prop_map(|(index, size)| FileRequest::Shipped { index, size }),
            ]
        }

        /// What a fetch made of an answer, and the bytes it stored.
        type Received = Result<(Fetched, Vec<u8>), FetchError>;

        /// Reads one answer to `request` from `wire`, both ways: into a
        /// writer, and into memory (which must end as it began on an error
        /// before the bytes, and never grow past what arrived).
        fn receive_both(request: FileRequest, wire: &[u8]) -> (Received, Received) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            runtime.block_on(async {
                let mut sink = Vec::new();
                let to_sink = receive(&mut &wire[..], request, &mut sink, STALL_LIMIT).await.map(|f| (f, sink));
                let mut memory = Vec::new();
                let to_memory = receive_to_vec(&mut &wire[..], request, &mut memory, None, STALL_LIMIT).await;
                assert!(memory.len() <= wire.len(), "stored more than arrived");
                assert!(
                    memory.capacity() <= request.reserve_for(u64::MAX).max(2 * wire.len()).max(64),
                    "reserved {} for {} bytes",
                    memory.capacity(),
                    wire.len()
                );
                (to_sink, to_memory.map(|f| (f, memory)))
            })
        }

        proptest! {
            #![proptest_config(crate::test_rng::proptest_config(3000))]

            #[test]
            fn requests_round_trip(request in request()) {
                let decoded = FileRequest::decode(&request.encode());
                // The plugin request carries no numbers; the others all theirs.
                prop_assert_eq!(decoded, Some(request));
            }

            #[test]
            fn any_request_bytes_decode_or_are_refused(bytes in prop::array::uniform25(any::<u8>())) {
                if let Some(request) = FileRequest::decode(&bytes) {
                    prop_assert_eq!(FileRequest::decode(&request.encode()), Some(request));
                    prop_assert!((1..=4).contains(&bytes[0]));
                }
            }

            #[test]
            fn valid_answers_arrive_whole(offset in 0u64..1 << 40, bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
                let request = FileRequest::AttemptOutput { attempt: 1, offset, len: bytes.len() as u64 };
                let (to_sink, to_memory) = receive_both(request, &answer(offset, bytes.len() as u64, &bytes));
                let expected = Fetched { offset, len: bytes.len() as u64 };
                prop_assert_eq!(to_sink.unwrap(), (expected, bytes.clone()));
                prop_assert_eq!(to_memory.unwrap(), (expected, bytes));
            }

            #[test]
            fn cut_or_damaged_answers_are_refused(
                bytes in prop::collection::vec(any::<u8>(), 1..2000),
                cut in any::<prop::sample::Index>(),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let request = FileRequest::AttemptOutput { attempt: 1, offset: 0, len: bytes.len() as u64 };
                let wire = answer(0, bytes.len() as u64, &bytes);
                let (to_sink, to_memory) = receive_both(request, &wire[..cut.index(wire.len())]);
                prop_assert!(matches!(to_sink, Err(FetchError::Network(_))), "{:?}", to_sink);
                prop_assert!(matches!(to_memory, Err(FetchError::Network(_))), "{:?}", to_memory);
                let mut damaged = wire.clone();
                damaged[flip.index(wire.len())] ^= 1 << bit;
                let (to_sink, to_memory) = receive_both(request, &damaged);
                prop_assert!(to_sink.is_err() && to_memory.is_err(), "{:?} {:?}", to_sink, to_memory);
            }

            #[test]
            fn garbage_answers_never_panic_nor_overallocate(request in request(), wire in prop::collection::vec(any::<u8>(), 0..200)) {
                let (to_sink, to_memory) = receive_both(request, &wire);
                // Taken only if announced as asked and sent whole with its CRC.
                for (fetched, bytes) in [to_sink, to_memory].into_iter().flatten() {
                    prop_assert!(request.admits(fetched.offset, fetched.len));
                    prop_assert_eq!(bytes.len() as u64, fetched.len);
                }
            }

            #[test]
            fn garbage_with_a_plausible_header_never_panics(request in request(), offset in any::<u64>(), len in any::<u64>(), rest in prop::collection::vec(any::<u8>(), 0..300)) {
                let mut wire = answer(offset, len, b"");
                wire.truncate(17);
                wire.extend_from_slice(&rest);
                let (to_sink, to_memory) = receive_both(request, &wire);
                for result in [to_sink, to_memory] {
                    if let Err(FetchError::WrongRange { offset: o, len: l, .. }) = result {
                        prop_assert!(!request.admits(o, l));
                    }
                }
            }
        }
    }
}
