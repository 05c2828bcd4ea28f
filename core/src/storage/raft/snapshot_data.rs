//! What openraft reads a Raft snapshot from and receives one into
//! ([`SnapshotData`], the `SnapshotData` of [`TypeConfig`](super::TypeConfig)).
//!
//! A snapshot handed to openraft by `get_current_snapshot` is either the
//! snapshot file already on disk ([`SnapshotData::ready`]) or one that is
//! written only when somebody reads it ([`SnapshotData::pending`]): the state
//! machine does not keep a copy of its whole state on disk for a follower
//! that may never need it (see [`state_machine`](super::state_machine)). The
//! write runs on a blocking thread from a redb read transaction taken when
//! the snapshot was handed out, so it is exactly the state its meta names;
//! the first read or seek waits for it, in the replication task that sends
//! the snapshot — not in openraft's state machine worker, which goes on
//! applying entries meanwhile. Every reader of the same pending snapshot
//! waits for the same write ([`Materializing`] is shared), then opens the
//! file it produced; a pending snapshot nobody reads (openraft's start-up
//! wants only the meta) is dropped without writing anything.
//!
//! A snapshot being received from a leader is always a ready file (the
//! receive file of [`SnapshotFile::receive_path`](super::snapshot::SnapshotFile::receive_path)).

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::snapshot::SnapshotFile;

/// A snapshot file being written: resolves once it is the current snapshot
/// file, or to why it could not be written. Cheap to clone; the write runs
/// once whoever polls it first.
pub(crate) type Materializing = Shared<BoxFuture<'static, Result<(), Arc<str>>>>;
/// A [`Materializing`] that does not keep the write alive: once nobody
/// holds the snapshot, its read transaction is released unwritten.
pub(crate) type WeakMaterializing = WeakShared<BoxFuture<'static, Result<(), Arc<str>>>>;

/// A Raft snapshot's bytes: an open file, or one still to be written.
pub struct SnapshotData {
    state: State,
    /// A seek asked for while the file was still being written.
    seek: Option<SeekFrom>,
}

enum State {
    Ready(tokio::fs::File),
    Pending {
        write: Materializing,
        snapshots: Arc<SnapshotFile>,
        /// The snapshot the write produces; the file opened afterwards
        /// must be this one (a newer one may have replaced it meanwhile).
        snapshot_id: String,
    },
}

impl SnapshotData {
    /// An open snapshot file.
    pub(crate) fn ready(file: tokio::fs::File) -> Self {
        SnapshotData {
            state: State::Ready(file),
            seek: None,
        }
    }

    /// The snapshot `snapshot_id` that `write` makes the current file of
    /// `snapshots`.
    pub(crate) fn pending(
        write: Materializing,
        snapshots: Arc<SnapshotFile>,
        snapshot_id: String,
    ) -> Self {
        SnapshotData {
            state: State::Pending {
                write,
                snapshots,
                snapshot_id,
            },
            seek: None,
        }
    }

    /// The file, once written.
    pub(crate) async fn into_file(mut self) -> io::Result<tokio::fs::File> {
        std::future::poll_fn(|cx| self.poll_file(cx).map_ok(|_| ())).await?;
        match self.state {
            State::Ready(file) => Ok(file),
            State::Pending { .. } => Err(io::Error::other("snapshot not written")),
        }
    }

    /// Wait for the file to be written and open it (at its first byte).
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut tokio::fs::File>> {
        if let State::Pending {
            write,
            snapshots,
            snapshot_id,
        } = &mut self.state
        {
            if let Err(why) = ready!(write.poll_unpin(cx)) {
                return Poll::Ready(Err(io::Error::other(format!(
                    "writing Raft snapshot {snapshot_id}: {why}"
                ))));
            }
            let file = snapshots
                .open_if(snapshot_id)
                .map_err(|e| io::Error::other(e.to_string()))?
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "Raft snapshot {snapshot_id} was replaced by a newer one before it was read"
                    ))
                })?;
            self.state = State::Ready(tokio::fs::File::from_std(file));
        }
        match &mut self.state {
            State::Ready(file) => Poll::Ready(Ok(file)),
            State::Pending { .. } => unreachable!("made ready above"),
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let file = ready!(this.poll_file(cx))?;
        Pin::new(file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let file = ready!(this.poll_file(cx))?;
        Pin::new(file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let file = ready!(this.poll_file(cx))?;
        Pin::new(file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let file = ready!(this.poll_file(cx))?;
        Pin::new(file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::Ready(file) => Pin::new(file).start_seek(position),
            State::Pending { .. } => {
                this.seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        let seek = this.seek.take();
        let file = match this.poll_file(cx) {
            Poll::Ready(f) => f?,
            Poll::Pending => {
                this.seek = seek;
                return Poll::Pending;
            }
        };
        if let Some(position) = seek {
            Pin::new(&mut *file).start_seek(position)?;
        }
        Pin::new(file).poll_complete(cx)
    }
}
