//! The handshake that opens every connection between the job's processes
//! (worker to coordinator, reducer to a worker's map output, coordinator to
//! a worker's reduce output), before any RPC or file byte.
//!
//! It does two things. It names the connecting process (an [`Identity`]:
//! the worker id shown in logs, plus a random incarnation number the
//! process keeps for its life, so that a reconnecting worker is known again
//! and nobody else can claim its id). And, when the job has a shared
//! secret, it proves to each side that the other knows it, without sending
//! it: challenge and response with HMAC-SHA256 over fresh random nonces
//! from both sides, so a recorded handshake cannot be replayed.
//!
//! ```text
//! client                                    server
//!   | <---------- "MRh1" flags nonce_s[32]   | flags bit 0: a secret is required
//!   | "MRh1" flags nonce_c[32] incarnation[16] name_len name tag_c[32] -->
//!   | <------ 0 tag_s[32]   (admitted)       | tag_c = HMAC(K, "client" nonce_s nonce_c incarnation name)
//!   | <------ 1 len reason  (refused)        | tag_s = HMAC(K, "server" nonce_c nonce_s)
//! ```
//!
//! Without a secret the tags are zeros and prove nothing; the coordinator
//! allows that only on a loopback address. Traffic after the handshake is
//! not encrypted: the secret keeps strangers out, it does not hide the
//! job's data from someone who can read the network.

use std::path::Path;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 4] = b"MRh1";
const NONCE_LEN: usize = 32;
const TAG_LEN: usize = 32;
/// Longest process name a client may give (a worker id is `host:pid`).
pub const MAX_NAME_LEN: usize = 255;
const FLAG_SECRET: u8 = 1;
const ADMITTED: u8 = 0;
const REFUSED: u8 = 1;
/// The shortest secret accepted: 16 bytes, 128 bits if random.
const MIN_SECRET_LEN: usize = 16;

/// How long either side waits for the other's half of the handshake: a
/// peer that stops halfway is dropped, not kept holding a connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The job's shared secret (`--token-file`). Never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

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
        Secret::from_bytes(&bytes[..end]).map_err(|len| SecretError::TooShort { path: shown.clone(), len })?.warn_if_shared(path)
    }

    /// A secret from its bytes; `Err` gives the length if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, usize> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(bytes.len());
        }
        Ok(Secret(bytes.to_vec()))
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
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8; TAG_LEN]) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
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
    /// The server's answer does not prove it knows the secret.
    #[error("it does not know the job's secret (the token files differ)")]
    ServerNotProven,
}

impl HandshakeError {
    /// Whether trying again may succeed (the network failed), as opposed to
    /// a refusal that will be repeated.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandshakeError::Connect(_) | HandshakeError::Io(_) | HandshakeError::TimedOut)
    }
}

/// Why the server refused a client, for its log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client gave no secret.
    #[error("it gave no secret (start it with the job's --token-file)")]
    NoSecret,
    /// The client's proof does not match: another secret.
    #[error("wrong secret (its token file differs from this one's)")]
    WrongSecret,
    /// The name is not text or is empty.
    #[error("it gave an unusable name")]
    BadName,
    /// The server's own reason (e.g. the name belongs to another process).
    #[error("{0}")]
    Other(String),
}

/// Runs the server's half on a fresh connection. `admit` has the last word
/// on an authenticated client (e.g. refusing a worker id another process
/// holds). Returns the client's identity, or why it was refused; a refused
/// client has been told why.
pub async fn accept<S, F>(stream: &mut S, secret: Option<&Secret>, admit: F) -> Result<Identity, AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Identity) -> Result<(), String>,
{
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    tokio::time::timeout_at(deadline, accept_within(stream, secret, admit)).await.unwrap_or(Err(AcceptError::Handshake(HandshakeError::TimedOut)))
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

async fn accept_within<S, F>(stream: &mut S, secret: Option<&Secret>, admit: F) -> Result<Identity, AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Identity) -> Result<(), String>,
{
    let nonce_s: [u8; NONCE_LEN] = random();
    let flags = if secret.is_some() { FLAG_SECRET } else { 0 };
    let mut hello = Vec::with_capacity(MAGIC.len() + 1 + NONCE_LEN);
    hello.extend_from_slice(MAGIC);
    hello.push(flags);
    hello.extend_from_slice(&nonce_s);
    stream.write_all(&hello).await.map_err(HandshakeError::Io)?;
    stream.flush().await.map_err(HandshakeError::Io)?;

    let client = ClientHello::read(stream).await?;
    let verdict = match secret {
        Some(_) if client.flags & FLAG_SECRET == 0 => Err(Refusal::NoSecret),
        Some(secret) if !secret.verify(&client.signed_parts(&nonce_s), &client.tag) => Err(Refusal::WrongSecret),
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
            let tag = secret.map_or([0; TAG_LEN], |s| s.tag(&[b"server", &client.nonce, &nonce_s]));
            let mut reply = vec![ADMITTED];
            reply.extend_from_slice(&tag);
            stream.write_all(&reply).await.map_err(HandshakeError::Io)?;
            stream.flush().await.map_err(HandshakeError::Io)?;
            Ok(identity)
        }
        Err(refusal) => {
            let reason = refusal.to_string();
            let reason = &reason.as_bytes()[..reason.len().min(u8::MAX as usize)];
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
        let (flags, nonce) = read_hello_start(stream).await?;
        let mut incarnation = [0; 16];
        stream.read_exact(&mut incarnation).await?;
        let mut name = vec![0; usize::from(stream.read_u8().await?)];
        stream.read_exact(&mut name).await?;
        let mut tag = [0; TAG_LEN];
        stream.read_exact(&mut tag).await?;
        Ok(ClientHello { flags, nonce, incarnation, name, tag })
    }

    /// What the client's tag covers, after the server's nonce.
    fn signed_parts<'a>(&'a self, nonce_s: &'a [u8; NONCE_LEN]) -> [&'a [u8]; 5] {
        [b"client", nonce_s, &self.nonce, &self.incarnation, &self.name]
    }
}

/// Reads what both sides' hellos start with: the magic, the flags and a nonce.
async fn read_hello_start<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u8, [u8; NONCE_LEN]), HandshakeError> {
    let mut magic = [0; 4];
    stream.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(HandshakeError::NotOurProtocol);
    }
    let flags = stream.read_u8().await?;
    let mut nonce = [0; NONCE_LEN];
    stream.read_exact(&mut nonce).await?;
    Ok((flags, nonce))
}

/// Opens a connection to `addr` for `service`: TCP (given up after
/// `connect_limit`, if there is one), the handshake as `identity`, then the
/// byte that names the service (see [`crate::files`]).
pub async fn dial(
    addr: &str,
    secret: Option<&Secret>,
    identity: &Identity,
    service: u8,
    connect_limit: Option<Duration>,
) -> Result<tokio::net::TcpStream, HandshakeError> {
    let tcp = tokio::net::TcpStream::connect(addr);
    let connected = match connect_limit {
        Some(limit) => tokio::time::timeout(limit, tcp).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => tcp.await,
    };
    let mut stream = connected.map_err(HandshakeError::Connect)?;
    // Requests and answers are small messages: sent at once, not held for
    // the peer's delayed acknowledgement.
    let _ = stream.set_nodelay(true);
    connect(&mut stream, secret, identity).await?;
    stream.write_all(&[service]).await?;
    Ok(stream)
}

/// Runs the client's half on a fresh connection to a server, as `identity`.
pub async fn connect<S>(stream: &mut S, secret: Option<&Secret>, identity: &Identity) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connect_within(stream, secret, identity)).await.unwrap_or(Err(HandshakeError::TimedOut))
}

async fn connect_within<S>(stream: &mut S, secret: Option<&Secret>, identity: &Identity) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (server_flags, nonce_s) = read_hello_start(stream).await?;
    let server_wants_secret = server_flags & FLAG_SECRET != 0;
    if secret.is_some() && !server_wants_secret {
        return Err(HandshakeError::ServerWithoutSecret);
    }
    let name = name_on_the_wire(&identity.name);
    let hello = ClientHello {
        flags: if secret.is_some() { FLAG_SECRET } else { 0 },
        nonce: random(),
        incarnation: identity.incarnation,
        name: name.to_vec(),
        tag: [0; TAG_LEN],
    };
    let tag = secret.map_or([0; TAG_LEN], |s| s.tag(&hello.signed_parts(&nonce_s)));
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
                Some(secret) if !secret.verify(&[b"server", &hello.nonce, &nonce_s], &tag_s) => Err(HandshakeError::ServerNotProven),
                _ => Ok(()),
            }
        }
        REFUSED if secret.is_none() && server_wants_secret => Err(HandshakeError::SecretRequired),
        REFUSED => {
            let mut reason = vec![0; usize::from(stream.read_u8().await?)];
            stream.read_exact(&mut reason).await?;
            Err(HandshakeError::Refused(String::from_utf8_lossy(&reason).into_owned()))
        }
        _ => Err(HandshakeError::NotOurProtocol),
    }
}

/// `name` as the client sends it: cut to [`MAX_NAME_LEN`] bytes, at a
/// character's boundary (a name cut inside one is not text, and the server
/// would refuse it).
fn name_on_the_wire(name: &str) -> &[u8] {
    let end = (0..=name.len().min(MAX_NAME_LEN)).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
    &name.as_bytes()[..end]
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

    /// Runs both halves over an in-memory pipe.
    async fn shake(
        server: Option<Secret>,
        client: Option<Secret>,
        admit: Result<(), String>,
    ) -> (Result<Identity, AcceptError>, Result<(), HandshakeError>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let me = Identity::new("host:42".into());
        // The client's end closes when its half returns, as a process's would.
        let client = async move { connect(&mut b, client.as_ref(), &me).await };
        tokio::join!(accept(&mut a, server.as_ref(), move |_| admit), client)
    }

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
        let (mut a, mut b) = tokio::io::duplex(1024);
        let fake = async move {
            let mut hello = MAGIC.to_vec();
            hello.push(FLAG_SECRET);
            hello.extend_from_slice(&[7; NONCE_LEN]);
            a.write_all(&hello).await.unwrap();
            ClientHello::read(&mut a).await.unwrap();
            a.write_all(&[ADMITTED]).await.unwrap();
            a.write_all(&[0; TAG_LEN]).await.unwrap();
        };
        let me = Identity::new("w".into());
        let key = secret("0123456789abcdef");
        let ((), client) = tokio::join!(fake, connect(&mut b, Some(&key), &me));
        assert!(matches!(client, Err(HandshakeError::ServerNotProven)), "{client:?}");
    }

    #[tokio::test]
    async fn another_protocol_is_named() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await.unwrap();
        let client = connect(&mut b, None, &Identity::new("w".into())).await;
        assert!(matches!(client, Err(HandshakeError::NotOurProtocol)), "{client:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_timeout() {
        let (mut a, _b) = tokio::io::duplex(1024);
        let server = accept(&mut a, None, |_| Ok(())).await;
        assert!(matches!(server, Err(AcceptError::Handshake(HandshakeError::TimedOut))), "{server:?}");
    }

    #[tokio::test]
    async fn a_long_name_is_cut_at_a_character_not_inside_one() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let long = format!("{}é-and-more", "w".repeat(MAX_NAME_LEN - 1));
        let me = Identity::new(long.clone());
        let (server, client) = tokio::join!(accept(&mut a, None, |_| Ok(())), connect(&mut b, None, &me));
        client.unwrap();
        assert_eq!(server.unwrap().name, long.chars().take(MAX_NAME_LEN - 1).collect::<String>());
    }

    #[test]
    fn token_files_are_trimmed_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().0, b"0123456789abcdef");
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
        use proptest::prelude::*;

        use super::*;

        /// The server's half against a client that sent `input`.
        fn server_reads(input: &[u8], secret: Option<&Secret>) -> Result<Identity, AcceptError> {
            let mut stream = tokio::io::join(input, Vec::new());
            futures::executor::block_on(accept_within(&mut stream, secret, |_| Ok(())))
        }

        /// The client's half against a server that sent `input`.
        fn client_reads(input: &[u8], secret: Option<&Secret>) -> Result<(), HandshakeError> {
            let mut stream = tokio::io::join(input, Vec::new());
            futures::executor::block_on(connect_within(&mut stream, secret, &Identity::new("w".into())))
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
                    let (mut a, mut b) = tokio::io::duplex(4096);
                    tokio::join!(accept(&mut a, secret.as_ref(), |_| Ok(())), connect(&mut b, secret.as_ref(), &me))
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
            fn arbitrary_server_bytes_never_panic_nor_admit_with_a_secret(input in prop::collection::vec(any::<u8>(), 0..400), with_hello: bool, flags: u8) {
                let secret = Secret::from_bytes(b"0123456789abcdef").unwrap();
                // Past the magic half the time, so the rest is read too.
                let mut bytes = if with_hello { [&MAGIC[..], &[flags], &[5; NONCE_LEN]].concat() } else { Vec::new() };
                bytes.extend_from_slice(&input);
                prop_assert!(client_reads(&bytes, Some(&secret)).is_err());
                let _ = client_reads(&bytes, None);
            }
        }
    }
}
