//! Encryption of the connections between the job's processes: TLS 1.3
//! (rustls) on every connection of a job that has a shared secret, RPC,
//! file fetches and uploads alike, so that nobody on the network can read
//! or change what crosses it (the app plugin included).
//!
//! The certificates prove nothing, and are not meant to: each process
//! makes a throwaway one when it first serves (rcgen), and nothing could
//! vouch for it. Who is at the other end is proven by the
//! [handshake](crate::handshake) that runs inside the TLS session, whose
//! HMAC covers this session's exporter value (RFC 8446 section 7.5). A man
//! in the middle holds two TLS sessions, one with each end, with two
//! different exporter values; the tags the ends compute with the job's
//! secret over their own session's value cannot verify on the other, and
//! he cannot compute tags for either without the secret. (This is channel
//! binding, as SCRAM's `tls-exporter` and Hadoop's SASL over TLS do it.)
//!
//! A process decides nothing here by itself: the server's first bytes say
//! whether the connection is encrypted (see [`crate::handshake`]), and this
//! module only wraps the TCP stream accordingly.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The label of the exporter value the handshake's tags cover.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-mapreduce-handshake";
/// Bytes of exporter value the handshake's tags cover.
pub const BINDING_LEN: usize = 32;

/// A connection between two of the job's processes: plain, or encrypted.
pub enum Secured<S> {
    /// Bytes as they are (loopback without a secret, or `--no-tls`).
    Plain(S),
    /// A TLS session this process opened.
    Client(Box<tokio_rustls::client::TlsStream<S>>),
    /// A TLS session this process accepted.
    Server(Box<tokio_rustls::server::TlsStream<S>>),
}

impl<S> std::fmt::Debug for Secured<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_encrypted() { "Secured::Tls(..)" } else { "Secured::Plain(..)" })
    }
}

/// A connection over TCP, as the job's processes make them.
pub type Stream = Secured<TcpStream>;

impl<S> Secured<S> {
    /// The connection under the encryption.
    pub fn get_ref(&self) -> &S {
        match self {
            Secured::Plain(s) => s,
            Secured::Client(tls) => tls.get_ref().0,
            Secured::Server(tls) => tls.get_ref().0,
        }
    }

    /// Whether the bytes are encrypted.
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Secured::Plain(_))
    }

    /// This TLS session's exporter value (`None` on a plain connection): a
    /// secret both ends of this one session share, and nobody else has.
    pub fn channel_binding(&self) -> Option<[u8; BINDING_LEN]> {
        let exported = match self {
            Secured::Plain(_) => return None,
            Secured::Client(tls) => tls.get_ref().1.export_keying_material([0; BINDING_LEN], EXPORTER_LABEL, None),
            Secured::Server(tls) => tls.get_ref().1.export_keying_material([0; BINDING_LEN], EXPORTER_LABEL, None),
        };
        // Fails only before the handshake is complete, which it is here.
        exported.ok()
    }
}

impl Secured<TcpStream> {
    /// This end's address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.get_ref().local_addr()
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.get_ref().peer_addr()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Secured<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Secured::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Secured::Client(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Secured::Server(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Secured<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Secured::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Secured::Client(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Secured::Server(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Secured::Plain(s) => Pin::new(s).poll_flush(cx),
            Secured::Client(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Secured::Server(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Secured::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Secured::Client(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Secured::Server(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens a TLS session on `stream` as its client.
pub async fn encrypt_as_client<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> io::Result<Secured<S>> {
    let connector = tokio_rustls::TlsConnector::from(client_config()?);
    // The name is never checked (see the module's doc), and not sent.
    let name = ServerName::try_from("mapreduce.invalid").expect("a valid DNS name");
    Ok(Secured::Client(Box::new(connector.connect(name, stream).await?)))
}

/// Accepts a TLS session on `stream` as its server.
pub async fn encrypt_as_server<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> io::Result<Secured<S>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config()?);
    Ok(Secured::Server(Box::new(acceptor.accept(stream).await?)))
}

/// ring's suites with AES-128-GCM first: as strong as a job needs, and
/// fewer rounds per block than AES-256 (the default first) where a large
/// shuffle is encrypted byte by byte.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The client's settings, made once per process.
fn client_config() -> io::Result<Arc<ClientConfig>> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let made = CONFIG.get_or_init(|| {
        let provider = provider();
        let verifier = Arc::new(AnyCertificate { algorithms: provider.signature_verification_algorithms });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.enable_sni = false;
        Ok(Arc::new(config))
    });
    made.clone().map_err(|e| io::Error::other(format!("cannot set up TLS: {e}")))
}

/// The server's settings with this process's certificate, made the first
/// time it serves.
fn server_config() -> io::Result<Arc<ServerConfig>> {
    static CONFIG: OnceLock<Result<Arc<ServerConfig>, String>> = OnceLock::new();
    let made = CONFIG.get_or_init(|| {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let params = rcgen::CertificateParams::new(vec!["mapreduce.invalid".to_owned()]).map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(config))
    });
    made.clone().map_err(|e| io::Error::other(format!("cannot set up TLS: {e}")))
}

/// Takes any certificate the server shows, but checks that the server
/// holds its key (the handshake's signature): whether the server is the
/// job's is proven by the handshake bound to the session, not by this.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connection used from a thread that is not the runtime's (a reduce's
/// own thread writing its upload, the coordinator's thread taking one),
/// with the timeouts of a blocking socket: each read and write fails with
/// `TimedOut` after its limit, as `SO_RCVTIMEO` and `SO_SNDTIMEO` make
/// them. Works the same over a plain or an encrypted connection.
pub struct Blocking {
    stream: Stream,
    runtime: tokio::runtime::Handle,
    read_limit: Option<Duration>,
    write_limit: Option<Duration>,
}

impl Blocking {
    /// `stream`, driven by `runtime` (whose thread this must not be).
    pub fn new(stream: Stream, runtime: tokio::runtime::Handle) -> Blocking {
        Blocking { stream, runtime, read_limit: None, write_limit: None }
    }

    /// How long a read waits for a byte (`None`: for ever).
    pub fn set_read_timeout(&mut self, limit: Option<Duration>) {
        self.read_limit = limit;
    }

    /// How long a write or flush waits for room (`None`: for ever).
    pub fn set_write_timeout(&mut self, limit: Option<Duration>) {
        self.write_limit = limit;
    }

    /// Reads what has arrived without waiting: `Ok(None)` if nothing has.
    pub fn read_ready(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Blocking { stream, runtime, .. } = self;
        runtime.block_on(async {
            let mut read = std::pin::pin!(stream.read(buf));
            futures::future::poll_fn(|cx| match read.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(result.map(Some)),
                Poll::Pending => Poll::Ready(Ok(None)),
            })
            .await
        })
    }
}

/// Runs `io` on `runtime`, failing with `TimedOut` past `limit`.
fn within<T>(runtime: &tokio::runtime::Handle, limit: Option<Duration>, io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    runtime.block_on(async {
        match limit {
            Some(limit) => tokio::time::timeout(limit, io).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => io.await,
        }
    })
}

impl io::Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        within(&self.runtime, self.read_limit, self.stream.read(buf))
    }
}

impl io::Write for Blocking {
    /// Writes some of `buf` and flushes it (an encrypted stream may hold
    /// the last record until then), within the write limit.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Blocking { stream, runtime, write_limit, .. } = self;
        within(runtime, *write_limit, async {
            let written = stream.write(buf).await?;
            stream.flush().await?;
            Ok(written)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        within(&self.runtime, self.write_limit, self.stream.flush())
    }
}
