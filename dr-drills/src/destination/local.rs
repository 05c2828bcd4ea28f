//! A local directory as a snapshot destination (`storage_type = "local"`, the
//! embedded default and what `server --dev` uses).
//!
//! A key `a/b.snap` is the file `<root>/a/b.snap`. Uploads stream into
//! `<key>.partial` next to the final file, are fsynced, renamed into place and
//! the directory fsynced, so a crash leaves either the whole object or a
//! `.partial` file (never listed, removed by `abort_stale_uploads`). Downloads
//! stream the file in fixed-size chunks.

use super::{
    ByteStream, Destination, DestinationKind, ObjectInfo, Tally, UploadResult, validate_key,
};
use crate::error::DestinationError;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

/// Suffix of an upload in progress.
pub const PARTIAL_SUFFIX: &str = ".partial";
const WRITE_BUFFER: usize = 1 << 20;
const READ_CHUNK: usize = 256 << 10;

/// Snapshots in a directory on this machine.
#[derive(Clone, Debug)]
pub struct LocalDestination {
    root: PathBuf,
}

impl LocalDestination {
    /// Uses `root`, creating it when missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DestinationError> {
        let root = root.into();
        if root.as_os_str().is_empty() {
            return Err(DestinationError::Config {
                field: "path_prefix",
                message: "a local destination needs a directory".into(),
            });
        }
        std::fs::create_dir_all(&root)
            .map_err(|e| DestinationError::io("create directory", &root, e))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_for(&self, key: &str) -> Result<PathBuf, DestinationError> {
        validate_key(key)?;
        if key.ends_with(PARTIAL_SUFFIX) {
            return Err(DestinationError::InvalidKey {
                key: key.to_string(),
                reason: "'.partial' is reserved for uploads in progress",
            });
        }
        Ok(self.root.join(key))
    }

    async fn write_partial(
        &self,
        key: &str,
        partial: &Path,
        mut body: ByteStream,
        tally: &mut Tally,
    ) -> Result<(), DestinationError> {
        let file = tokio::fs::File::create(partial)
            .await
            .map_err(|e| DestinationError::io("create", partial, e))?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| DestinationError::Source {
                key: key.to_string(),
                source,
            })?;
            tally.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| DestinationError::io("write", partial, e))?;
        }
        out.flush()
            .await
            .map_err(|e| DestinationError::io("write", partial, e))?;
        out.get_ref()
            .sync_all()
            .await
            .map_err(|e| DestinationError::io("fsync", partial, e))
    }

    /// Every file under the directory that may hold keys starting with
    /// `prefix`, with its key; `.partial` files included.
    async fn walk(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, std::fs::Metadata)>, DestinationError> {
        let root = self.root.clone();
        // Start at the deepest directory the prefix names.
        let start_rel = match prefix.rfind('/') {
            Some(i) => prefix[..i].to_string(),
            None => String::new(),
        };
        tokio::task::spawn_blocking(move || walk_dir(&root, &start_rel))
            .await
            .map_err(|e| DestinationError::io("list", &self.root, io::Error::other(e)))?
    }
}

fn walk_dir(
    root: &Path,
    start_rel: &str,
) -> Result<Vec<(String, std::fs::Metadata)>, DestinationError> {
    let mut out = Vec::new();
    let mut dirs = vec![start_rel.to_string()];
    while let Some(rel) = dirs.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DestinationError::io("read directory", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| DestinationError::io("read directory", &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue; // not a key we could have written
            };
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry
                .file_type()
                .map_err(|e| DestinationError::io("stat", entry.path(), e))?;
            if ft.is_dir() {
                dirs.push(key);
            } else if ft.is_file() {
                match entry.metadata() {
                    Ok(md) => out.push((key, md)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DestinationError::io("stat", entry.path(), e)),
                }
            }
        }
    }
    Ok(out)
}

fn info(key: String, md: &std::fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key,
        size: md.len(),
        last_modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

async fn fsync_dir(dir: &Path) -> Result<(), DestinationError> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(|e| DestinationError::io("open directory", dir, e))?;
    d.sync_all()
        .await
        .map_err(|e| DestinationError::io("fsync directory", dir, e))
}

#[async_trait]
impl Destination for LocalDestination {
    fn kind(&self) -> DestinationKind {
        DestinationKind::Local
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    async fn upload(&self, key: &str, body: ByteStream) -> Result<UploadResult, DestinationError> {
        let started = Instant::now();
        let path = self.path_for(key)?;
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| DestinationError::io("create directory", &parent, e))?;
        let partial = with_suffix(&path, PARTIAL_SUFFIX);
        let mut tally = Tally::default();
        if let Err(e) = self.write_partial(key, &partial, body, &mut tally).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        if let Err(e) = tokio::fs::rename(&partial, &path).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(DestinationError::io("rename into place", &path, e));
        }
        fsync_dir(&parent).await?;
        let (bytes, sha256) = tally.finish();
        Ok(UploadResult {
            bytes,
            sha256,
            parts: 1,
            duration: started.elapsed(),
        })
    }

    async fn put_small(&self, key: &str, bytes: Bytes) -> Result<(), DestinationError> {
        self.upload(key, futures::stream::once(async move { Ok(bytes) }).boxed())
            .await
            .map(|_| ())
    }

    async fn get_small(&self, key: &str, max_bytes: u64) -> Result<Bytes, DestinationError> {
        let path = self.path_for(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DestinationError::NotFound {
                    destination: self.describe(),
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(DestinationError::io("open", &path, e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| DestinationError::io("stat", &path, e))?
            .len();
        if size > max_bytes {
            return Err(DestinationError::TooLarge {
                key: key.to_string(),
                size,
                max_bytes,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        // Read at most one byte past the limit, in case the file grew.
        (&mut file)
            .take(max_bytes + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| DestinationError::io("read", &path, e))?;
        if buf.len() as u64 > max_bytes {
            return Err(DestinationError::TooLarge {
                key: key.to_string(),
                size: buf.len() as u64,
                max_bytes,
            });
        }
        Ok(Bytes::from(buf))
    }

    async fn download(&self, key: &str) -> Result<ByteStream, DestinationError> {
        let path = self.path_for(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DestinationError::NotFound {
                    destination: self.describe(),
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(DestinationError::io("open", &path, e)),
        };
        Ok(futures::stream::try_unfold(file, |mut file| async move {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let n = file.read_buf(&mut buf).await?;
            Ok((n > 0).then(|| (buf.freeze(), file)))
        })
        .boxed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, DestinationError> {
        let mut out: Vec<ObjectInfo> = self
            .walk(prefix)
            .await?
            .into_iter()
            .filter(|(key, _)| key.starts_with(prefix) && !key.ends_with(PARTIAL_SUFFIX))
            .map(|(key, md)| info(key, &md))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), DestinationError> {
        let path = self.path_for(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DestinationError::io("delete", &path, e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, DestinationError> {
        let path = self.path_for(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(md) if md.is_file() => Ok(Some(info(key.to_string(), &md))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DestinationError::io("stat", &path, e)),
        }
    }

    async fn abort_stale_uploads(
        &self,
        prefix: &str,
        older_than: Duration,
    ) -> Result<usize, DestinationError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for (key, md) in self.walk(prefix).await? {
            let Some(final_key) = key.strip_suffix(PARTIAL_SUFFIX) else {
                continue;
            };
            if !final_key.starts_with(prefix) {
                continue;
            }
            let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if modified <= cutoff {
                let path = self.root.join(&key);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DestinationError::io("delete", &path, e)),
                }
            }
        }
        Ok(removed)
    }
}
