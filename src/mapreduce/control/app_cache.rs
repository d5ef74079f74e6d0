//! The apps a long-lived worker has fetched, kept by SHA-256 in its work
//! directory, so that a second job with the same app (the common case: a
//! cluster runs the same few apps over and over) starts without fetching
//! it again. A job names its app by SHA-256 ([`JobApp`]); a fetched file
//! enters the cache only once its digest matches, under a name made from
//! the digest alone (never from the file name the coordinator sent, which
//! a hostile peer could fill with `../`). The cache lives and goes with the
//! worker's work directory ([`crate::agent`]).
//!
//! The worker does not load the plugins it caches: each runs in the task
//! processes of the slots that take its job's tasks, where a plugin that
//! fails to load fails that job's attempts, not the worker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use crate::files::{Fetcher, FileRequest};
use crate::plugin::file_sha256;
use crate::rpc::JobApp;
use crate::untrusted::{excerpt, EXCERPT_CHARS};

/// Hex digits in a SHA-256.
const SHA256_HEX_LEN: usize = 64;

/// Why a job's app could not be had.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum AppCacheError {
    /// The job's SHA-256 is not 64 lowercase hex digits.
    #[error("the job names its app by {sha256:?}, which is not a SHA-256 in hex")]
    BadDigest { sha256: String },
    /// The cache's directory or a file in it.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Fetching it from the job's coordinator failed.
    #[error("fetching the job's app {file_name} from {address}: {error}")]
    Fetch { file_name: String, address: String, error: String },
    /// What came is not the job's app.
    #[error("the app fetched from {address} has SHA-256 {found}, not the job's {expected}")]
    Mismatch { address: String, found: String, expected: String },
}

/// Plugins by SHA-256, in one directory (see the module docs).
#[derive(Debug)]
pub struct AppCache {
    dir: PathBuf,
    /// A lock per app being fetched, by SHA-256, held while fetching it:
    /// two slots that open sessions of jobs with the same app at once fetch
    /// it once, and a slow fetch holds up no other app's (nor a cached one).
    fetching: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl AppCache {
    /// A cache in `dir`, which is made if missing.
    pub fn new(dir: PathBuf) -> Result<AppCache, AppCacheError> {
        std::fs::create_dir_all(&dir).map_err(|source| AppCacheError::Io { path: dir.clone(), source })?;
        Ok(AppCache { dir, fetching: std::sync::Mutex::default() })
    }

    /// The path of `app`'s plugin, fetched with `fetcher` from the job's
    /// coordinator at `address` unless cached already.
    pub async fn get(&self, app: &JobApp, fetcher: &Fetcher, address: &str) -> Result<PathBuf, AppCacheError> {
        let name = cache_file_name(&app.sha256).ok_or_else(|| AppCacheError::BadDigest { sha256: excerpt(&app.sha256, EXCERPT_CHARS) })?;
        let path = self.dir.join(name);
        // Only a file whose digest matched was ever put there.
        if path.is_file() {
            return Ok(path);
        }
        let fetching = self.fetch_lock(&app.sha256);
        let _fetching = fetching.lock().await;
        // Fetched by another slot while this one waited?
        if path.is_file() {
            return Ok(path);
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AppCacheError::Io { path, source }
        };
        let staged = tempfile::Builder::new().prefix(".fetching-").tempfile_in(&self.dir).map_err(io(&self.dir))?;
        let mut sink = tokio::fs::File::from_std(staged.reopen().map_err(io(staged.path()))?);
        let fetched = fetcher.fetch(address, FileRequest::Plugin { size: app.size }, &mut sink).await;
        fetched.map_err(|e| AppCacheError::Fetch {
            file_name: excerpt(&app.file_name, EXCERPT_CHARS),
            address: address.to_owned(),
            error: crate::link::peer_error(&e),
        })?;
        tokio::io::AsyncWriteExt::flush(&mut sink).await.map_err(io(staged.path()))?;
        drop(sink);
        let found = file_sha256(staged.path()).map_err(io(staged.path()))?;
        if found != app.sha256 {
            return Err(AppCacheError::Mismatch { address: address.to_owned(), found, expected: app.sha256.clone() });
        }
        staged.persist(&path).map_err(|e| AppCacheError::Io { path: path.clone(), source: e.error })?;
        tracing::info!(app = %excerpt(&app.file_name, EXCERPT_CHARS), sha256 = %app.sha256, "fetched the app from {address}");
        Ok(path)
    }

    /// The lock of fetching the app with SHA-256 `sha256`: while a slot
    /// holds it, the others wait for it; dropped with its last holder.
    fn fetch_lock(&self, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        fetching.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = fetching.get(sha256).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        fetching.insert(sha256.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

/// The cache's file name for the app with SHA-256 `sha256`: `<sha256>.so`,
/// or `None` when `sha256` is not 64 lowercase hex digits (as
/// [`file_sha256`] writes them), so that nothing a peer sends makes a path
/// of its choosing.
pub fn cache_file_name(sha256: &str) -> Option<String> {
    let hex = sha256.len() == SHA256_HEX_LEN && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| format!("{sha256}.so"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cache_names_come_from_digests_only() {
        let digest = "0123456789abcdef".repeat(4);
        assert_eq!(cache_file_name(&digest), Some(format!("{digest}.so")));
        let upper = digest.to_uppercase();
        let traversal = format!("../{}", "a".repeat(61));
        let (long, not_hex, slash) = (format!("{digest}0"), format!("{}g", "a".repeat(63)), format!("{}/", "a".repeat(63)));
        for bad in ["", "abc", &upper, &traversal, &long, &not_hex, &slash] {
            assert_eq!(cache_file_name(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_bad_digest_fetches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = AppCache::new(dir.path().join("apps")).unwrap();
        let identity = crate::handshake::Identity::new("test:1".into());
        let fetcher = Fetcher::new(None, identity);
        let app = JobApp { file_name: "libx.so".into(), sha256: "../../etc/passwd".into(), size: 1 };
        // An address nobody listens on: a fetch would fail otherwise.
        let error = cache.get(&app, &fetcher, "127.0.0.1:1").await.unwrap_err();
        assert!(matches!(error, AppCacheError::BadDigest { .. }), "{error}");
        assert_eq!(std::fs::read_dir(dir.path().join("apps")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_cached_app_is_not_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = AppCache::new(dir.path().to_owned()).unwrap();
        let plugin = dir.path().join("source.so");
        std::fs::write(&plugin, b"not really a plugin").unwrap();
        let sha256 = file_sha256(&plugin).unwrap();
        std::fs::copy(&plugin, dir.path().join(cache_file_name(&sha256).unwrap())).unwrap();
        let fetcher = Fetcher::new(None, crate::handshake::Identity::new("test:1".into()));
        let app = JobApp { file_name: "libx.so".into(), sha256: sha256.clone(), size: 19 };
        // Nobody listens at that address: only the cache can answer.
        let path = cache.get(&app, &fetcher, "127.0.0.1:1").await.unwrap();
        assert_eq!(file_sha256(&path).unwrap(), sha256);
        let other = JobApp { sha256: "f".repeat(64), ..app };
        assert!(matches!(cache.get(&other, &fetcher, "127.0.0.1:1").await, Err(AppCacheError::Fetch { .. })));
    }

    #[tokio::test]
    async fn a_slow_fetch_holds_up_no_other_app() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(AppCache::new(dir.path().to_owned()).unwrap());
        let plugin = dir.path().join("source.so");
        std::fs::write(&plugin, b"not really a plugin").unwrap();
        let sha256 = file_sha256(&plugin).unwrap();
        std::fs::copy(&plugin, dir.path().join(cache_file_name(&sha256).unwrap())).unwrap();
        // A coordinator that accepts and never answers: its fetch hangs.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = silent.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let fetcher = Fetcher::new(None, crate::handshake::Identity::new("test:1".into()));
        let slow = JobApp { file_name: "libslow.so".into(), sha256: "e".repeat(64), size: 1 };
        let fetching = {
            let (cache, fetcher, address) = (cache.clone(), fetcher.clone(), address.clone());
            tokio::spawn(async move { cache.get(&slow, &fetcher, &address).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!fetching.is_finished(), "the fetch from a silent coordinator hangs");
        let cached = JobApp { file_name: "libx.so".into(), sha256: sha256.clone(), size: 19 };
        let got = tokio::time::timeout(Duration::from_secs(2), cache.get(&cached, &fetcher, &address)).await;
        let path = got.expect("a cached app is had while another app's fetch hangs").unwrap();
        assert_eq!(file_sha256(&path).unwrap(), sha256);
        // Another app not cached: fetched (and failing here) without waiting either.
        let other = JobApp { file_name: "liby.so".into(), sha256: "d".repeat(64), size: 1 };
        let got = tokio::time::timeout(Duration::from_secs(2), cache.get(&other, &fetcher, "127.0.0.1:1")).await;
        assert!(matches!(got.expect("another app's fetch does not wait"), Err(AppCacheError::Fetch { .. })));
        fetching.abort();
        held.abort();
    }
}
