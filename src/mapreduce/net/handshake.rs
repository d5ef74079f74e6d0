//! The handshake that opens every connection between the job's processes
//! (worker to coordinator, reducer to a worker's map output, coordinator to
//! a worker's reduce output), before any RPC or file byte.
//!
//! It does three things. It names the connecting process (an [`Identity`]:
//! the worker id shown in logs, plus a random incarnation number the
//! process keeps for its life, so that a reconnecting worker is known again
//! and nobody else can claim its id). When the job has a shared secret, it
//! encrypts the connection ([TLS](crate::secure), unless every process was
//! started with `--no-tls`). And it proves to each side that the other
//! knows the secret, without sending it: challenge and response with
//! HMAC-SHA256 over fresh random nonces from both sides and over the TLS
//! session's exporter value, so that a recorded handshake cannot be
//! replayed, nor a live one relayed by a man in the middle into sessions
//! of his own.
//!
//! ```text
//! client                                    server
//!   | <---------- "MRh3" flags               | plain; flags bit 0: a secret is required,
//!   |                                        |        bit 1: the connection is encrypted,
//!   |                                        |        bit 2: the server is a standing cluster
//!   | ======= TLS 1.3 handshake ==========   | if bit 1; all that follows inside it
//!   | <---------- nonce_s[32]                |
//!   | "MRh3" flags nonce_c[32] incarnation[16] name_len name tag_c[32] -->
//!   | <------ 0 tag_s[32]   (admitted)       | tag_c = HMAC(K, "client" B nonce_s nonce_c incarnation name)
//!   | <------ 1 len reason  (refused)        | tag_s = HMAC(K, "server" B nonce_c nonce_s)
//! ```
//!
//! `B`, the binding, is the server's flags byte followed by the TLS
//! exporter value (nothing on a plain connection): a man in the middle who
//! changes the flags or runs TLS sessions of his own makes each end compute
//! its tags over another `B`, and neither admits the other.
//!
//! Without a secret the tags are zeros and prove nothing; the coordinator
//! allows that only on a loopback address, and such connections are plain.
//! With a secret and `--no-tls`, the handshake still keeps strangers out,
//! but the traffic after it is neither hidden nor protected.

use std::path::Path;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::secure::{self, Secured, Stream, BINDING_LEN};

/// Changed whenever the RPC messages change (3: heartbeats and reports
/// carry the worker's memory), so that mismatched builds are refused at the
/// handshake rather than failing to decode each other's calls.
const MAGIC: &[u8; 4] = b"MRh3";
const NONCE_LEN: usize = 32;
const TAG_LEN: usize = 32;
/// Longest process name a client may give (a worker id is `host:pid`).
pub const MAX_NAME_LEN: usize = 255;
const FLAG_SECRET: u8 = 1;
const FLAG_TLS: u8 = 2;
const FLAG_CLUSTER: u8 = 4;
const ADMITTED: u8 = 0;
const REFUSED: u8 = 1;
/// The shortest secret accepted: 16 bytes, 128 bits if random.
const MIN_SECRET_LEN: usize = 16;

/// How long either side waits for the other's half of the handshake: a
/// peer that stops halfway is dropped, not kept holding a connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The job's shared secret (`--token-file`), and whether the connections
/// it opens are encrypted (they are unless `--no-tls`). Never printed.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    tls: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum SecretError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the token file {path} holds {len} bytes; a secret needs at least {MIN_SECRET_LEN} (make one with `head -c 32 /dev/urandom | base64 > {path}`)")]
    TooShort { path: String, len: usize },
}

impl Secret {
    /// Reads the secret from `path`: the file's bytes without trailing
    /// whitespace (so an editor's final newline does not matter).
    pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read { path: shown.clone(), source })?;
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        Secret::from_bytes(bytes.get(..end).unwrap_or_default())
            .map_err(|len| SecretError::TooShort { path: shown.clone(), len })?
            .warn_if_shared(path)
    }

    /// A secret from its bytes; `Err` gives the length if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, usize> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(bytes.len());
        }
        Ok(Secret { key: bytes.to_vec(), tls: true })
    }

    /// This secret, with connections that are authenticated but not
    /// encrypted (`--no-tls`: for a network where nobody else can listen,
    /// at the cost of everything after the handshake being open to anyone
    /// who can).
    pub fn without_tls(self) -> Secret {
        Secret { tls: false, ..self }
    }

    /// Whether this process encrypts its connections.
    pub fn encrypts(&self) -> bool {
        self.tls
    }

    /// Whether `presented` (an HTTP `Authorization: Bearer` credential) is
    /// this secret, compared in constant time: both are MACed under the
    /// secret and the tags compared by `hmac`'s verify, so neither the
    /// bytes nor the length of a wrong guess shows in the time taken.
    pub fn matches_bearer(&self, presented: &[u8]) -> bool {
        self.verify(&[b"http bearer", presented], &self.tag(&[b"http bearer", &self.key]))
    }

    fn warn_if_shared(self, path: &Path) -> Result<Secret, SecretError> {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!("the token file {} can be read by other users; `chmod 600` it", path.display());
            }
        }
        Ok(self)
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8; TAG_LEN]) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
        }
        // Constant time, so the comparison leaks nothing of the right tag.
        mac.verify_slice(tag).is_ok()
    }
}

/// Who is at the other end of an admitted connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The process's name: a worker's id (`host:pid`), or what a
    /// fetching process calls itself.
    pub name: String,
    /// Random, drawn once per process: the same name with another
    /// incarnation is another process.
    pub incarnation: [u8; 16],
}

impl Identity {
    /// This process, called `name`, with an incarnation drawn now.
    pub fn new(name: String) -> Identity {
        Identity { name, incarnation: random() }
    }
}

/// Why a handshake did not admit the connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// No connection could be made ([`dial`]).
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The connection failed or closed halfway.
    #[error("the connection broke during the handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The other side did not answer in [`HANDSHAKE_TIMEOUT`].
    #[error("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    TimedOut,
    /// The other side does not speak this protocol (or another version).
    #[error("the other side does not speak this framework's protocol (a different program, or another version of it)")]
    NotOurProtocol,
    /// The server refused the client; the reason is the server's.
    #[error("refused: {0}")]
    Refused(String),
    /// The server requires a secret and this client has none.
    #[error("it requires a shared secret: give this process the job's token file (--token-file FILE or MR_TOKEN_FILE)")]
    SecretRequired,
    /// This client has a secret and the server does not use one: it may
    /// not be the job's server at all.
    #[error("it runs without a shared secret, but this process was given one; not trusting it (start it with the same --token-file)")]
    ServerWithoutSecret,
    /// The server's answer does not prove it knows the secret (or a man in
    /// the middle relays the connection).
    #[error("it does not know the job's secret (the token files differ), or the connection is tampered with on the way")]
    ServerNotProven,
    /// This process encrypts its connections and the server does not.
    #[error("it does not encrypt its connections (it was started with --no-tls) and this process does: start both the same way")]
    ServerWithoutTls,
    /// The TLS handshake failed: the network, or someone on it.
    #[error("the TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The address to dial is not `HOST:PORT` or `HOST:PORT/job-N`.
    #[error("{0}")]
    Address(#[from] crate::route::AddressError),
}

/// What kind of server a client reached, as the server's preamble says
/// (its flags are covered by both sides' tags, so a man in the middle
/// cannot change it without the handshake failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// A coordinator that runs one job (`mr-master`).
    OneJob,
    /// A standing cluster (`mr-master --serve`), whose jobs are reached by
    /// their route ([`crate::route`]).
    Cluster,
}

impl HandshakeError {
    /// Whether trying again may succeed (the network failed), as opposed to
    /// a refusal that will be repeated.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandshakeError::Connect(_) | HandshakeError::Io(_) | HandshakeError::TimedOut | HandshakeError::Tls(_))
    }
}

/// Why the server refused a client, for its log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client gave no secret.
    #[error("it gave no secret (start it with the job's --token-file)")]
    NoSecret,
    /// The client's proof does not match: another secret (or a man in the
    /// middle).
    #[error("wrong secret (its token file differs from this one's), or the connection is tampered with on the way")]
    WrongSecret,
    /// The name is not text or is empty.
    #[error("it gave an unusable name")]
    BadName,
    /// The server's own reason (e.g. the name belongs to another process).
    #[error("{0}")]
    Other(String),
}

/// Runs the server's half on a fresh connection, encrypting it if the
/// secret says so. `admit` has the last word on an authenticated client
/// (e.g. refusing a worker id another process holds). Returns the
/// connection and the client's identity, or why it was refused; a refused
/// client has been told why.
pub async fn accept<S, F>(stream: S, secret: Option<&Secret>, admit: F) -> Result<(Secured<S>, Identity), AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Identity) -> Result<(), String>,
{
    accept_as(ServerKind::OneJob, stream, secret, admit).await
}

/// [`accept`] for a server of `kind`, which the client learns from the
/// preamble.
pub async fn accept_as<S, F>(kind: ServerKind, stream: S, secret: Option<&Secret>, admit: F) -> Result<(Secured<S>, Identity), AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Identity) -> Result<(), String>,
{
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let within = async {
        let flags = server_flags(secret) | if kind == ServerKind::Cluster { FLAG_CLUSTER } else { 0 };
        let mut stream = stream;
        stream.write_all(&[&MAGIC[..], &[flags]].concat()).await.map_err(HandshakeError::Io)?;
        stream.flush().await.map_err(HandshakeError::Io)?;
        let mut stream = match flags & FLAG_TLS {
            0 => Secured::Plain(stream),
            _ => secure::encrypt_as_server(stream).await.map_err(HandshakeError::Tls)?,
        };
        let binding = binding(flags, &stream);
        let identity = accept_within(&mut stream, secret, &binding, admit).await?;
        Ok((stream, identity))
    };
    tokio::time::timeout_at(deadline, within).await.unwrap_or(Err(AcceptError::Handshake(HandshakeError::TimedOut)))
}

/// The flags a server with `secret` sends.
fn server_flags(secret: Option<&Secret>) -> u8 {
    match secret {
        None => 0,
        Some(secret) if secret.encrypts() => FLAG_SECRET | FLAG_TLS,
        Some(_) => FLAG_SECRET,
    }
}

/// What both sides' tags cover besides the nonces: the server's flags as
/// this side saw them, and the TLS session's exporter value.
fn binding<S>(flags: u8, stream: &Secured<S>) -> Vec<u8> {
    let mut binding = Vec::with_capacity(1 + BINDING_LEN);
    binding.push(flags);
    if let Some(exported) = stream.channel_binding() {
        binding.extend_from_slice(&exported);
    }
    binding
}

/// What [`accept`] found wrong: the handshake itself, or a client refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The handshake did not complete.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The client completed it and was refused.
    #[error("{0}")]
    Refused(#[from] Refusal),
}

/// The server's half after the preamble (and TLS): the nonce, the
/// client's hello, the verdict.
async fn accept_within<S, F>(stream: &mut S, secret: Option<&Secret>, binding: &[u8], admit: F) -> Result<Identity, AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Identity) -> Result<(), String>,
{
    let nonce_s: [u8; NONCE_LEN] = random();
    stream.write_all(&nonce_s).await.map_err(HandshakeError::Io)?;
    stream.flush().await.map_err(HandshakeError::Io)?;

    let client = ClientHello::read(stream).await?;
    let verdict = match secret {
        Some(_) if client.flags & FLAG_SECRET == 0 => Err(Refusal::NoSecret),
        Some(secret) if !secret.verify(&client.signed_parts(binding, &nonce_s), &client.tag) => Err(Refusal::WrongSecret),
        _ => match String::from_utf8(client.name.clone()) {
            Ok(name) if !name.is_empty() => {
                let identity = Identity { name, incarnation: client.incarnation };
                admit(&identity).map(|()| identity).map_err(Refusal::Other)
            }
            _ => Err(Refusal::BadName),
        },
    };
    match verdict {
        Ok(identity) => {
            let tag = secret.map_or([0; TAG_LEN], |s| s.tag(&[b"server", binding, &client.nonce, &nonce_s]));
            let mut reply = vec![ADMITTED];
            reply.extend_from_slice(&tag);
            stream.write_all(&reply).await.map_err(HandshakeError::Io)?;
            stream.flush().await.map_err(HandshakeError::Io)?;
            Ok(identity)
        }
        Err(refusal) => {
            let reason = refusal.to_string();
            let reason = super::at_most(reason.as_bytes(), u8::MAX as usize);
            let mut reply = vec![REFUSED, reason.len() as u8];
            reply.extend_from_slice(reason);
            // The client may be gone already; the refusal stands either way.
            let _ = stream.write_all(&reply).await;
            let _ = stream.flush().await;
            Err(AcceptError::Refused(refusal))
        }
    }
}

/// The client's half of the handshake, as the server reads it.
struct ClientHello {
    flags: u8,
    nonce: [u8; NONCE_LEN],
    incarnation: [u8; 16],
    name: Vec<u8>,
    tag: [u8; TAG_LEN],
}

impl ClientHello {
    async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ClientHello, HandshakeError> {
        let flags = read_magic_and_flags(stream).await?;
        let mut nonce = [0; NONCE_LEN];
        stream.read_exact(&mut nonce).await?;
        let mut incarnation = [0; 16];
        stream.read_exact(&mut incarnation).await?;
        let mut name = vec![0; usize::from(stream.read_u8().await?)];
        stream.read_exact(&mut name).await?;
        let mut tag = [0; TAG_LEN];
        stream.read_exact(&mut tag).await?;
        Ok(ClientHello { flags, nonce, incarnation, name, tag })
    }

    /// What the client's tag covers.
    fn signed_parts<'a>(&'a self, binding: &'a [u8], nonce_s: &'a [u8; NONCE_LEN]) -> [&'a [u8]; 6] {
        [b"client", binding, nonce_s, &self.nonce, &self.incarnation, &self.name]
    }
}

/// Reads what the server's preamble and the client's hello start with: the
/// magic, then the flags.
async fn read_magic_and_flags<S: AsyncRead + Unpin>(stream: &mut S) -> Result<u8, HandshakeError> {
    let mut magic = [0; 4];
    stream.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(HandshakeError::NotOurProtocol);
    }
    Ok(stream.read_u8().await?)
}

/// Opens a connection to `addr` for `service`: TCP (given up after
/// `connect_limit`, if there is one), the handshake as `identity`, then the
/// byte that names the service (see [`crate::files`]). `addr` may be a
/// job's address behind a cluster (`HOST:PORT/job-N`, see
/// [`crate::route`]): its route goes before the service byte.
pub async fn dial(
    addr: &str,
    secret: Option<&Secret>,
    identity: &Identity,
    service: u8,
    connect_limit: Option<Duration>,
) -> Result<Stream, HandshakeError> {
    Ok(dial_learning(addr, secret, identity, service, connect_limit).await?.0)
}

/// [`dial`], also returning what kind of server answered.
pub async fn dial_learning(
    addr: &str,
    secret: Option<&Secret>,
    identity: &Identity,
    service: u8,
    connect_limit: Option<Duration>,
) -> Result<(Stream, ServerKind), HandshakeError> {
    let address = crate::route::Address::parse(addr)?;
    let tcp = tokio::net::TcpStream::connect(address.host_port);
    let connected = match connect_limit {
        Some(limit) => tokio::time::timeout(limit, tcp).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => tcp.await,
    };
    let stream = connected.map_err(HandshakeError::Connect)?;
    // Requests and answers are small messages: sent at once, not held for
    // the peer's delayed acknowledgement.
    let _ = stream.set_nodelay(true);
    let (mut stream, kind) = connect_learning(stream, secret, identity).await?;
    let mut head = address.route_bytes();
    head.push(service);
    stream.write_all(&head).await?;
    stream.flush().await?;
    Ok((stream, kind))
}

/// Runs the client's half on a fresh connection to a server, as
/// `identity`, encrypting it if the server does: the connection, ready for
/// the service byte.
pub async fn connect<S>(stream: S, secret: Option<&Secret>, identity: &Identity) -> Result<Secured<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Ok(connect_learning(stream, secret, identity).await?.0)
}

/// [`connect`], also returning what kind of server answered.
async fn connect_learning<S>(stream: S, secret: Option<&Secret>, identity: &Identity) -> Result<(Secured<S>, ServerKind), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let within = async {
        let mut stream = stream;
        let flags = read_magic_and_flags(&mut stream).await?;
        if let Some(secret) = secret {
            if flags & FLAG_SECRET == 0 {
                return Err(HandshakeError::ServerWithoutSecret);
            }
            if secret.encrypts() && flags & FLAG_TLS == 0 {
                return Err(HandshakeError::ServerWithoutTls);
            }
        }
        let mut stream = match flags & FLAG_TLS {
            0 => Secured::Plain(stream),
            _ => secure::encrypt_as_client(stream).await.map_err(HandshakeError::Tls)?,
        };
        let binding = binding(flags, &stream);
        connect_within(&mut stream, secret, flags, &binding, identity).await?;
        Ok((stream, if flags & FLAG_CLUSTER != 0 { ServerKind::Cluster } else { ServerKind::OneJob }))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, within).await.unwrap_or(Err(HandshakeError::TimedOut))
}

/// The client's half after the preamble (and TLS): the server's nonce, the
/// hello, the verdict.
async fn connect_within<S>(
    stream: &mut S,
    secret: Option<&Secret>,
    server_flags: u8,
    binding: &[u8],
    identity: &Identity,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut nonce_s = [0; NONCE_LEN];
    stream.read_exact(&mut nonce_s).await?;
    let server_wants_secret = server_flags & FLAG_SECRET != 0;
    let name = name_on_the_wire(&identity.name);
    let hello = ClientHello {
        flags: if secret.is_some() { FLAG_SECRET } else { 0 },
        nonce: random(),
        incarnation: identity.incarnation,
        name: name.to_vec(),
        tag: [0; TAG_LEN],
    };
    let tag = secret.map_or([0; TAG_LEN], |s| s.tag(&hello.signed_parts(binding, &nonce_s)));
    let mut bytes = Vec::with_capacity(128 + name.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(hello.flags);
    bytes.extend_from_slice(&hello.nonce);
    bytes.extend_from_slice(&hello.incarnation);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&tag);
    stream.write_all(&bytes).await?;
    stream.flush().await?;

    match stream.read_u8().await? {
        ADMITTED => {
            let mut tag_s = [0; TAG_LEN];
            stream.read_exact(&mut tag_s).await?;
            match secret {
                Some(secret) if !secret.verify(&[b"server", binding, &hello.nonce, &nonce_s], &tag_s) => Err(HandshakeError::ServerNotProven),
                _ => Ok(()),
            }
        }
        REFUSED if secret.is_none() && server_wants_secret => Err(HandshakeError::SecretRequired),
        REFUSED => {
            let mut reason = vec![0; usize::from(stream.read_u8().await?)];
            stream.read_exact(&mut reason).await?;
            // The server's words, shown in logs and errors: escaped here.
            Err(HandshakeError::Refused(crate::untrusted::excerpt(&String::from_utf8_lossy(&reason), MAX_NAME_LEN)))
        }
        _ => Err(HandshakeError::NotOurProtocol),
    }
}

/// `name` as the client sends it: cut to [`MAX_NAME_LEN`] bytes, at a
/// character's boundary (a name cut inside one is not text, and the server
/// would refuse it).
fn name_on_the_wire(name: &str) -> &[u8] {
    let end = (0..=name.len().min(MAX_NAME_LEN)).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
    name.as_bytes().get(..end).unwrap_or_default()
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes
}

/// A server's log of refused connections, at most one line per
/// [`RefusalLog::EVERY`], so that a stream of strangers cannot flood it.
#[derive(Debug, Default)]
pub struct RefusalLog {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// The shortest time between two log lines.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Notes a refused connection from `peer`, logging it unless a line
    /// was logged in the last [`RefusalLog::EVERY`].
    pub fn refused(&mut self, peer: &str, why: &AcceptError) {
        let now = Instant::now();
        if self.logged_at.is_some_and(|at| now.duration_since(at) < Self::EVERY) {
            self.unlogged += 1;
            return;
        }
        let more = std::mem::take(&mut self.unlogged);
        let more = if more > 0 { format!(" ({more} more refused since the last such line)") } else { String::new() };
        tracing::warn!("refused a connection from {peer}: {why}{more}");
        self.logged_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> Secret {
        Secret::from_bytes(text.as_bytes()).unwrap()
    }

    #[test]
    fn a_bearer_matches_the_secret_only() {
        let key = secret("0123456789abcdef");
        assert!(key.matches_bearer(b"0123456789abcdef"));
        assert!(!key.matches_bearer(b"0123456789abcdeF"));
        assert!(!key.matches_bearer(b"0123456789abcdef0"));
        assert!(!key.matches_bearer(b""));
    }

    /// Runs both halves over an in-memory pipe.
    async fn shake(
        server: Option<Secret>,
        client: Option<Secret>,
        admit: Result<(), String>,
    ) -> (Result<Identity, AcceptError>, Result<(), HandshakeError>) {
        let (a, b) = tokio::io::duplex(PIPE);
        let me = Identity::new("host:42".into());
        // Each end closes when its half returns, as a process's would.
        let client = async move { connect(b, client.as_ref(), &me).await.map(drop) };
        let server = async move { accept(a, server.as_ref(), move |_| admit).await.map(|(_, identity)| identity) };
        tokio::join!(server, client)
    }

    /// Room in an in-memory pipe: a TLS handshake's messages fit.
    const PIPE: usize = 64 * 1024;

    #[tokio::test]
    async fn the_same_secret_admits_and_names_the_client() {
        let (server, client) = shake(Some(secret("0123456789abcdef")), Some(secret("0123456789abcdef")), Ok(())).await;
        assert_eq!(server.unwrap().name, "host:42");
        client.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() {
        let (server, client) = shake(Some(secret("0123456789abcdef")), Some(secret("fedcba9876543210")), Ok(())).await;
        assert!(matches!(server, Err(AcceptError::Refused(Refusal::WrongSecret))), "{server:?}");
        let client = client.unwrap_err();
        assert!(client.to_string().contains("wrong secret"), "{client}");
        assert!(!client.is_transient());
    }

    #[tokio::test]
    async fn no_secret_against_one_that_needs_it_says_so() {
        let (server, client) = shake(Some(secret("0123456789abcdef")), None, Ok(())).await;
        assert!(matches!(server, Err(AcceptError::Refused(Refusal::NoSecret))), "{server:?}");
        assert!(matches!(client, Err(HandshakeError::SecretRequired)), "{client:?}");
    }

    #[tokio::test]
    async fn a_client_with_a_secret_does_not_trust_a_server_without() {
        let (server, client) = shake(None, Some(secret("0123456789abcdef")), Ok(())).await;
        assert!(matches!(client, Err(HandshakeError::ServerWithoutSecret)), "{client:?}");
        assert!(matches!(server, Err(AcceptError::Handshake(HandshakeError::Io(_)))), "{server:?}");
    }

    #[tokio::test]
    async fn without_secrets_the_client_is_named_and_admit_decides() {
        let (server, client) = shake(None, None, Ok(())).await;
        assert_eq!(server.unwrap().name, "host:42");
        client.unwrap();
        let (server, client) = shake(None, None, Err("that id belongs to another process".into())).await;
        assert!(matches!(server, Err(AcceptError::Refused(Refusal::Other(_)))), "{server:?}");
        assert!(client.unwrap_err().to_string().contains("belongs to another process"));
    }

    #[tokio::test]
    async fn a_server_that_cannot_prove_the_secret_is_not_trusted() {
        // A server that admits everyone without the secret: replays a tag of zeros.
        let (mut a, b) = tokio::io::duplex(PIPE);
        let fake = async move {
            a.write_all(&[&MAGIC[..], &[FLAG_SECRET]].concat()).await.unwrap();
            a.write_all(&[7; NONCE_LEN]).await.unwrap();
            ClientHello::read(&mut a).await.unwrap();
            a.write_all(&[ADMITTED]).await.unwrap();
            a.write_all(&[0; TAG_LEN]).await.unwrap();
        };
        let me = Identity::new("w".into());
        let key = secret("0123456789abcdef").without_tls();
        let ((), client) = tokio::join!(fake, connect(b, Some(&key), &me));
        assert!(matches!(client, Err(HandshakeError::ServerNotProven)), "{client:?}");
    }

    #[tokio::test]
    async fn another_protocol_is_named() {
        let (mut a, b) = tokio::io::duplex(PIPE);
        a.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await.unwrap();
        let client = connect(b, None, &Identity::new("w".into())).await;
        assert!(matches!(client, Err(HandshakeError::NotOurProtocol)), "{client:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_timeout() {
        for key in [None, Some(secret("0123456789abcdef"))] {
            let (a, _b) = tokio::io::duplex(PIPE);
            let server = accept(a, key.as_ref(), |_| Ok(())).await.map(drop);
            assert!(matches!(server, Err(AcceptError::Handshake(HandshakeError::TimedOut))), "{server:?}");
        }
    }

    #[tokio::test]
    async fn a_long_name_is_cut_at_a_character_not_inside_one() {
        let (a, b) = tokio::io::duplex(PIPE);
        let long = format!("{}é-and-more", "w".repeat(MAX_NAME_LEN - 1));
        let me = Identity::new(long.clone());
        let (server, client) = tokio::join!(accept(a, None, |_| Ok(())), connect(b, None, &me));
        client.unwrap();
        assert_eq!(server.unwrap().1.name, long.chars().take(MAX_NAME_LEN - 1).collect::<String>());
    }

    #[tokio::test]
    async fn with_a_secret_the_connection_is_encrypted_and_carries_bytes_both_ways() {
        let key = secret("0123456789abcdef");
        let (a, b) = tokio::io::duplex(PIPE);
        let me = Identity::new("w".into());
        let (server, client) = tokio::join!(accept(a, Some(&key), |_| Ok(())), connect(b, Some(&key), &me));
        let ((mut server, identity), mut client) = (server.unwrap(), client.unwrap());
        assert_eq!(identity, me);
        assert!(server.is_encrypted() && client.is_encrypted());
        assert_eq!(server.channel_binding(), client.channel_binding(), "one session, one exporter value");
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    }

    #[tokio::test]
    async fn without_tls_on_both_sides_the_connection_is_authenticated_but_plain() {
        let key = secret("0123456789abcdef").without_tls();
        let (a, b) = tokio::io::duplex(PIPE);
        let me = Identity::new("w".into());
        let (server, client) = tokio::join!(accept(a, Some(&key), |_| Ok(())), connect(b, Some(&key), &me));
        assert!(!server.unwrap().0.is_encrypted());
        assert!(!client.unwrap().is_encrypted());
        // A client that does not insist on TLS follows a server that uses it.
        let (server, client) = shake(Some(secret("0123456789abcdef")), Some(key.clone()), Ok(())).await;
        server.unwrap();
        client.unwrap();
        // One that insists does not talk to a server without it.
        let (_, client) = shake(Some(key), Some(secret("0123456789abcdef")), Ok(())).await;
        assert!(matches!(client, Err(HandshakeError::ServerWithoutTls)), "{client:?}");
    }

    /// A man in the middle: holds a TLS session with each end (he can make
    /// certificates too) and relays what one sends to the other, having
    /// first changed the server's flags with `rewrite_flags`.
    async fn relayed(
        server_key: Secret,
        client_key: Secret,
        rewrite_flags: fn(u8) -> u8,
    ) -> (Result<Identity, AcceptError>, Result<(), HandshakeError>) {
        let (server_end, mut to_server) = tokio::io::duplex(PIPE);
        let (mut to_client, client_end) = tokio::io::duplex(PIPE);
        let me = Identity::new("w".into());
        let server = async move { accept(server_end, Some(&server_key), |_| Ok(())).await.map(|(_, identity)| identity) };
        let client = async move { connect(client_end, Some(&client_key), &me).await.map(drop) };
        let relay = async move {
            let mut preamble = [0; 5];
            to_server.read_exact(&mut preamble).await?;
            let flags = preamble[4];
            preamble[4] = rewrite_flags(flags);
            to_client.write_all(&preamble).await?;
            let mut towards_server = match flags & FLAG_TLS {
                0 => Secured::Plain(to_server),
                _ => secure::encrypt_as_client(to_server).await?,
            };
            let mut towards_client = match preamble[4] & FLAG_TLS {
                0 => Secured::Plain(to_client),
                _ => secure::encrypt_as_server(to_client).await?,
            };
            tokio::io::copy_bidirectional(&mut towards_server, &mut towards_client).await.map(drop)
        };
        let (server, client, _) = tokio::join!(server, client, relay);
        (server, client)
    }

    #[tokio::test]
    async fn a_man_in_the_middle_with_sessions_of_his_own_is_refused_by_both_ends() {
        let key = secret("0123456789abcdef");
        let (server, client) = relayed(key.clone(), key.clone(), |flags| flags).await;
        assert!(matches!(server, Err(AcceptError::Refused(Refusal::WrongSecret))), "{server:?}");
        assert!(client.is_err(), "{client:?}");
        // Stripping encryption from the flags: a client that insists refuses.
        let (_, client) = relayed(key.clone(), key.clone(), |flags| flags & !FLAG_TLS).await;
        assert!(matches!(client, Err(HandshakeError::ServerWithoutTls)), "{client:?}");
        // One that does not insist is caught by the tags, which cover the flags.
        let (server, client) = relayed(key.clone(), key.clone().without_tls(), |flags| flags & !FLAG_TLS).await;
        assert!(matches!(server, Err(AcceptError::Refused(Refusal::WrongSecret))), "{server:?}");
        assert!(client.is_err(), "{client:?}");
        // Without TLS anywhere the same relay passes unseen: what TLS is for.
        let plain = key.without_tls();
        let (server, client) = relayed(plain.clone(), plain, |flags| flags).await;
        server.unwrap();
        client.unwrap();
    }

    #[test]
    fn token_files_are_trimmed_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().key, b"0123456789abcdef");
        std::fs::write(&path, "short\n").unwrap();
        let e = Secret::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("holds 5 bytes") && e.contains("at least 16"), "{e}");
        let e = Secret::from_file(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read the token file"), "{e}");
    }

    /// Fuzz-style properties of both halves' decoders: each reads what the
    /// other sent from `input` (arbitrary bytes, or a valid half changed),
    /// with no runtime and no timer (the halves within the timeout).
    mod properties {
        use futures::TryFutureExt;
        use proptest::prelude::*;

        use super::*;

        /// The server's half (past the preamble) against a client that sent `input`.
        fn server_reads(input: &[u8], secret: Option<&Secret>) -> Result<Identity, AcceptError> {
            let mut stream = tokio::io::join(input, Vec::new());
            futures::executor::block_on(accept_within(&mut stream, secret, &[server_flags(secret)], |_| Ok(())))
        }

        /// The client's half (past the preamble) against a server that
        /// sent `flags`, then `input`.
        fn client_reads(flags: u8, input: &[u8], secret: Option<&Secret>) -> Result<(), HandshakeError> {
            let mut stream = tokio::io::join(input, Vec::new());
            futures::executor::block_on(connect_within(&mut stream, secret, flags, &[flags], &Identity::new("w".into())))
        }

        /// A client's hello as `connect` sends it, with `tag` as its proof.
        fn client_hello(flags: u8, name: &[u8], tag: [u8; TAG_LEN]) -> Vec<u8> {
            let mut bytes = MAGIC.to_vec();
            bytes.push(flags);
            bytes.extend_from_slice(&[3; NONCE_LEN]);
            bytes.extend_from_slice(&[4; 16]);
            bytes.push(name.len() as u8);
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(&tag);
            bytes
        }

        proptest! {
            #![proptest_config(crate::test_rng::proptest_config(3000))]

            #[test]
            fn any_name_round_trips_cut_at_a_character(name in "\\PC{0,300}", with_secret: bool) {
                let secret = with_secret.then(|| Secret::from_bytes(b"0123456789abcdef").unwrap());
                let me = Identity::new(name.clone());
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                let (server, client) = runtime.block_on(async {
                    let (a, b) = tokio::io::duplex(PIPE);
                    tokio::join!(accept(a, secret.as_ref(), |_| Ok(())).map_ok(|(_, identity)| identity), connect(b, secret.as_ref(), &me))
                });
                let sent = name_on_the_wire(&name);
                prop_assert!(sent.len() <= MAX_NAME_LEN && name.as_bytes().starts_with(sent));
                if sent.is_empty() {
                    prop_assert!(matches!(server, Err(AcceptError::Refused(Refusal::BadName))), "{:?}", server);
                } else {
                    let admitted = server.unwrap();
                    prop_assert_eq!(admitted.name.as_bytes(), sent);
                    prop_assert_eq!(admitted.incarnation, me.incarnation);
                    prop_assert!(client.is_ok(), "{:?}", client);
                }
            }

            #[test]
            fn arbitrary_client_bytes_never_panic_and_never_prove_a_secret(input in prop::collection::vec(any::<u8>(), 0..400)) {
                let secret = Secret::from_bytes(b"0123456789abcdef").unwrap();
                prop_assert!(server_reads(&input, Some(&secret)).is_err());
                let _ = server_reads(&input, None);
            }

            #[test]
            fn forged_hellos_are_refused(flags: u8, name in prop::collection::vec(any::<u8>(), 0..=255), tag: [u8; TAG_LEN], cut in any::<prop::sample::Index>()) {
                let secret = Secret::from_bytes(b"0123456789abcdef").unwrap();
                let hello = client_hello(flags, &name, tag);
                let refused = server_reads(&hello, Some(&secret));
                prop_assert!(matches!(refused, Err(AcceptError::Refused(Refusal::NoSecret | Refusal::WrongSecret))), "{:?}", refused);
                // Without a secret, a name that is text is admitted as it is.
                match (server_reads(&hello, None), String::from_utf8(name)) {
                    (Ok(identity), Ok(name)) => prop_assert_eq!(identity.name, name),
                    (Err(AcceptError::Refused(Refusal::BadName)), Err(_)) => {}
                    (Err(AcceptError::Refused(Refusal::BadName)), Ok(name)) => prop_assert!(name.is_empty()),
                    (other, _) => prop_assert!(false, "{:?}", other),
                }
                // Cut anywhere: the connection broke, nothing is decided.
                let cut = &hello[..cut.index(hello.len())];
                let broken = server_reads(cut, None);
                prop_assert!(matches!(broken, Err(AcceptError::Handshake(HandshakeError::Io(_) | HandshakeError::NotOurProtocol))), "{:?}", broken);
            }

            #[test]
            fn arbitrary_server_bytes_never_panic_nor_admit_with_a_secret(input in prop::collection::vec(any::<u8>(), 0..400), flags: u8) {
                let secret = Secret::from_bytes(b"0123456789abcdef").unwrap();
                prop_assert!(client_reads(flags, &input, Some(&secret)).is_err());
                let _ = client_reads(flags, &input, None);
            }

            #[test]
            fn arbitrary_preambles_never_panic_nor_admit_with_a_secret(input in prop::collection::vec(any::<u8>(), 0..400), with_magic: bool) {
                let secret = Secret::from_bytes(b"0123456789abcdef").unwrap();
                // Past the magic half the time, so the flags (and TLS) are tried too.
                let bytes = if with_magic { [&MAGIC[..], &input].concat() } else { input };
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                let me = Identity::new("w".into());
                for key in [Some(&secret), None] {
                    let connected = runtime.block_on(connect(tokio::io::join(&bytes[..], Vec::new()), key, &me));
                    prop_assert!(key.is_none() || connected.is_err());
                }
            }
        }
    }
}
