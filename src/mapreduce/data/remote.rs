//! Object storage: inputs and outputs at `s3://BUCKET/KEY` URLs, through
//! the `object_store` crate's S3 client (any S3-compatible server).
//!
//! The client is configured as the AWS tools are, from the environment:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` (a server other than AWS's, addressed by path:
//! `http://host:port/BUCKET/KEY`) and `AWS_ALLOW_HTTP=true` (for an
//! endpoint without TLS). A request that fails in passing (a 5xx answer, a
//! timeout, a refused or reset connection) is tried again with exponential
//! backoff (100 ms doubling to 2 s), for at most `MR_S3_RETRY_SECS`
//! seconds (30 by default) and 10 tries; then the error names the URL and
//! the last failure.
//!
//! A URL is a [`PathBuf`] in the job's input list, as a local path is: its
//! text starts with `s3://`, and [`is_url`] tells them apart. These
//! functions block the calling thread; the requests run on a small runtime
//! of their own, so that they may be called from any thread, a tokio
//! worker's included.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::ClientConfigKey;
use object_store::{BackoffConfig, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig};

/// The scheme of an object URL.
pub const SCHEME: &str = "s3://";

/// A request to object storage that failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Not an `s3://BUCKET/KEY` URL.
    #[error("{url}: not an object URL (s3://BUCKET/KEY)")]
    BadUrl {
        /// The text given.
        url: String,
    },
    /// A setting in the environment that is not one.
    #[error("{name}={value:?}: give a number of seconds")]
    Setting {
        /// The variable.
        name: &'static str,
        /// Its value (cut).
        value: String,
    },
    /// The object does not exist.
    #[error("{url}: no such object")]
    NotFound {
        /// The object's URL.
        url: String,
    },
    /// The object was written again since the job was planned.
    #[error("{url}: changed since the job was planned ({then} bytes then, {now} now, or written again)")]
    Changed {
        /// The object's URL.
        url: String,
        /// Its size when the job was planned.
        then: u64,
        /// Its size now.
        now: u64,
    },
    /// The request failed (after its retries).
    #[error("{url}: {source}")]
    Failed {
        /// The object's (or prefix's) URL.
        url: String,
        /// The last error.
        source: object_store::Error,
    },
}

/// An object's (or a prefix's) place: its bucket and key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectUrl {
    /// The bucket.
    pub bucket: String,
    /// The key, without a leading `/`; empty for the whole bucket.
    pub key: String,
}

impl ObjectUrl {
    /// Reads `s3://BUCKET/KEY` (or `s3://BUCKET`).
    pub fn parse(text: &str) -> Result<ObjectUrl, RemoteError> {
        let bad = || RemoteError::BadUrl { url: text.to_owned() };
        let rest = text.strip_prefix(SCHEME).ok_or_else(bad)?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = !bucket.is_empty() && bucket.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !bucket_ok || key.split('/').any(|part| part == "." || part == "..") {
            return Err(bad());
        }
        Ok(ObjectUrl { bucket: bucket.to_owned(), key: key.to_owned() })
    }

    /// The URL of `name` under this one, as under a directory.
    pub fn join(&self, name: &str) -> ObjectUrl {
        let key = match self.key.trim_end_matches('/') {
            "" => name.to_owned(),
            prefix => format!("{prefix}/{name}"),
        };
        ObjectUrl { bucket: self.bucket.clone(), key }
    }

    /// The key as the client takes it: as is, not percent-encoded again
    /// (keys come from listings as they are stored), so that `été.txt` or
    /// `a~1` names the object listed. A key the client cannot take (an
    /// empty part, as in `a//b`) is an error naming the URL.
    fn key(&self) -> Result<Key, RemoteError> {
        Key::parse(self.key.trim_end_matches('/')).map_err(|_| RemoteError::BadUrl { url: self.to_string() })
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.bucket, self.key)
    }
}

/// Whether `path` is an object URL rather than a local path.
pub fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|text| text.starts_with(SCHEME))
}

/// An object found by [`head`] or [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Where it is.
    pub url: ObjectUrl,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// The object at `url`, if there is one.
pub fn head(url: &ObjectUrl) -> Result<Option<ObjectInfo>, RemoteError> {
    let (store, key) = (client(url)?, url.key()?);
    match run(async move { store.head(&key).await }) {
        Ok(meta) => Ok(Some(info(&url.bucket, meta))),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(failed(url, source)),
    }
}

/// Every object under `prefix` taken as a directory (`s3://b/logs` lists
/// `logs/...`), sorted by key.
pub fn list(prefix: &ObjectUrl) -> Result<Vec<ObjectInfo>, RemoteError> {
    let store = client(prefix)?;
    let key = match prefix.key.trim_end_matches('/').is_empty() {
        true => None,
        false => Some(prefix.key()?),
    };
    let metas: Vec<ObjectMeta> = run(async move { store.list(key.as_ref()).try_collect().await }).map_err(|source| failed(prefix, source))?;
    let mut objects: Vec<ObjectInfo> = metas.into_iter().map(|meta| info(&prefix.bucket, meta)).collect();
    objects.sort_by(|a, b| a.url.cmp(&b.url));
    Ok(objects)
}

/// What a read expects of the object: the size and time it had when the
/// job was planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Its size then.
    pub size: u64,
    /// When it had last been written then.
    pub modified: Option<SystemTime>,
}

/// Bytes `range` of the object at `url`, appended to `out`, read in
/// pieces of at most [`READ_PIECE`] bytes (each request is bounded in
/// time). A range past the object's end is cut at it. With `planned`,
/// every piece checks that the object is the one the job was planned with
/// (same size, same time): one written again since fails the read, so
/// that no map mixes two versions of its input.
pub fn read_range(url: &ObjectUrl, range: Range<u64>, planned: Option<Planned>, out: &mut Vec<u8>) -> Result<(), RemoteError> {
    let mut at = range.start;
    while at < range.end {
        let piece = at..range.end.min(at.saturating_add(READ_PIECE));
        let (store, key) = (client(url)?, url.key()?);
        let options = object_store::GetOptions { range: Some(piece.clone().into()), ..Default::default() };
        let fetched = run(async move {
            let got = store.get_opts(&key, options).await?;
            let meta = got.meta.clone();
            Ok::<_, object_store::Error>((meta, got.bytes().await?))
        });
        let (meta, bytes) = fetched.map_err(|source| match source {
            object_store::Error::NotFound { .. } => RemoteError::NotFound { url: url.to_string() },
            source => failed(url, source),
        })?;
        if let Some(planned) = planned {
            let modified = SystemTime::from(meta.last_modified);
            if meta.size != planned.size || planned.modified.is_some_and(|then| whole_seconds(then) != whole_seconds(modified)) {
                return Err(RemoteError::Changed { url: url.to_string(), then: planned.size, now: meta.size });
            }
        }
        out.extend_from_slice(&bytes);
        if (bytes.len() as u64) < piece.end - piece.start {
            // The object ends here.
            return Ok(());
        }
        at = piece.end;
    }
    Ok(())
}

/// `time` in whole seconds since the epoch: a listing may give times in
/// milliseconds where a GET's `Last-Modified` header has seconds only.
fn whole_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// The most bytes one GET asks for.
pub const READ_PIECE: u64 = 64 << 20;

/// Writes `bytes` as the object at `url`, replacing any.
pub fn put(url: &ObjectUrl, bytes: Vec<u8>) -> Result<(), RemoteError> {
    let (store, key) = (client(url)?, url.key()?);
    run(async move { store.put(&key, bytes.into()).await }).map(drop).map_err(|source| failed(url, source))
}

/// Uploads local file `file` as the object at `url` (in parts, for a large
/// one), replacing any; returns its size.
pub fn upload(file: &Path, url: &ObjectUrl) -> Result<u64, RemoteError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (store, key, file) = (client(url)?, url.key()?, file.to_owned());
    let uploaded = run(async move {
        let mut local = tokio::fs::File::open(&file).await?;
        let mut remote = object_store::buffered::BufWriter::new(store, key);
        let (mut buffer, mut size) = (vec![0u8; 1 << 20], 0u64);
        loop {
            let n = local.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            remote.write_all(buffer.get(..n).unwrap_or_default()).await?;
            size += n as u64;
        }
        remote.shutdown().await?;
        Ok::<u64, std::io::Error>(size)
    });
    uploaded.map_err(|e| failed(url, object_store::Error::Generic { store: "S3", source: Box::new(e) }))
}

/// Copies the object at `from` to `to` (within one bucket), replacing
/// any there.
pub fn copy(from: &ObjectUrl, to: &ObjectUrl) -> Result<(), RemoteError> {
    let (store, from_key, to_key) = (client(to)?, from.key()?, to.key()?);
    run(async move { store.copy(&from_key, &to_key).await }).map_err(|source| failed(to, source))
}

/// Deletes the object at `url`; one that is not there is no error.
pub fn delete(url: &ObjectUrl) -> Result<(), RemoteError> {
    let (store, key) = (client(url)?, url.key()?);
    match run(async move { store.delete(&key).await }) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(failed(url, source)),
    }
}

fn info(bucket: &str, meta: ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        url: ObjectUrl { bucket: bucket.to_owned(), key: meta.location.to_string() },
        size: meta.size,
        modified: SystemTime::from(meta.last_modified),
    }
}

fn failed(url: &ObjectUrl, source: object_store::Error) -> RemoteError {
    RemoteError::Failed { url: url.to_string(), source }
}

/// The client of `url`'s bucket, made once per bucket from the
/// environment.
fn client(url: &ObjectUrl) -> Result<Arc<AmazonS3>, RemoteError> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<AmazonS3>>>> = OnceLock::new();
    let mut clients = CLIENTS.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(client) = clients.get(&url.bucket) {
        return Ok(client.clone());
    }
    let client = AmazonS3Builder::from_env()
        .with_bucket_name(&url.bucket)
        // One request may move a 64 MiB piece or copy a large output on
        // the server: longer than the client's 30 s default allows.
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "300s")
        .with_retry(retry_config()?)
        .build()
        .map_err(|source| failed(&ObjectUrl { bucket: url.bucket.clone(), key: String::new() }, source))?;
    let client = Arc::new(client);
    clients.insert(url.bucket.clone(), client.clone());
    Ok(client)
}

/// How failed requests are tried again (see the module's documentation).
fn retry_config() -> Result<RetryConfig, RemoteError> {
    let retry_timeout = match std::env::var("MR_S3_RETRY_SECS") {
        Err(_) => Duration::from_secs(30),
        Ok(text) => text
            .parse::<f64>()
            .ok()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .ok_or_else(|| RemoteError::Setting { name: "MR_S3_RETRY_SECS", value: text.chars().take(40).collect() })?,
    };
    Ok(RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(2), base: 2.0 },
        max_retries: 10,
        retry_timeout,
    })
}

/// Runs `request` on the requests' runtime and waits for it.
fn run<T: Send + 'static>(request: impl Future<Output = T> + Send + 'static) -> T {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mr-object-store")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the object storage client's threads: {e}"))
    });
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = sender.send(request.await);
    });
    receiver.recv().unwrap_or_else(|_| panic!("an object storage request was dropped unanswered"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_key() {
        let url = ObjectUrl::parse("s3://data/logs/2026/a.gz").unwrap();
        assert_eq!((url.bucket.as_str(), url.key.as_str()), ("data", "logs/2026/a.gz"));
        assert_eq!(url.to_string(), "s3://data/logs/2026/a.gz");
        assert_eq!(ObjectUrl::parse("s3://data").unwrap().join("x").to_string(), "s3://data/x");
        assert_eq!(ObjectUrl::parse("s3://data/out/").unwrap().join("mr-out-0").to_string(), "s3://data/out/mr-out-0");
        for bad in ["s3://", "s3:///key", "http://data/key", "s3://da ta/key", "s3://data/a/../b"] {
            assert!(matches!(ObjectUrl::parse(bad), Err(RemoteError::BadUrl { .. })), "{bad}");
        }
        assert!(is_url(Path::new("s3://data/x")) && !is_url(Path::new("/data/x")));
    }
}
