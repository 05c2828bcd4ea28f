//! `sys/storage/raft/snapshot` and `snapshot-force`: Vault-compatible Raft
//! snapshots, streamed both ways.
//!
//! `GET sys/storage/raft/snapshot` opens one consistent view of everything
//! applied ([`RaftStorage::open_export`]: a redb read transaction, no file
//! is built) and streams it out as Vault's archive, a gzip'd tar of:
//!
//! | file | content |
//! |---|---|
//! | `meta.json` | Vault's snapshot meta (`Version`, `ID`, `Index`, `Term`, `Size`) plus `CustosStateVersion` |
//! | `state.bin` | the state machine's pairs in the snapshot format (`CUSTOSNP`, a `u32` format version, see `storage::raft::snapshot`): version 2, batched, written from the view as it streams; values are barrier ciphertext, as stored |
//! | `SHA256SUMS` | `sha256  name` lines for `meta.json` and `state.bin` |
//! | `SHA256SUMS.sealed` | the same lines sealed by the barrier (AES-256-GCM under the active keyring term) |
//!
//! The gzip stream deflates `state.bin`'s keys sections at level 1 and
//! stores its values sections (level 0: ciphertext does not compress, and
//! deflating it was most of a save's CPU); it is still one gzip member.
//! The archive is produced on a blocking thread (with a second one reading,
//! batching and hashing `state.bin` for it) into a bounded channel that
//! is the response body, so memory stays flat whatever the data's size; a
//! failure mid-stream aborts the response, and without its last file the
//! real CLI reports the snapshot incomplete.
//!
//! `POST sys/storage/raft/snapshot` (a snapshot of this cluster) and
//! `POST sys/storage/raft/snapshot-force` (of any cluster) read the upload
//! as it arrives, hashing `state.bin` on the way and keeping the small files
//! (8 KiB at most each, as Vault). The checks, in this order, each failure a
//! 400 naming the check: the archive reads to its end (gzip CRC included: a
//! truncated or corrupted upload fails here); it holds exactly the four
//! files; the sealed sums open with this barrier's keyring (skipped by
//! `snapshot-force`, which is how a snapshot from another cluster is told
//! apart, as in Vault); both sum files match; `meta.json` decodes and its
//! state version is not newer than [`STATE_VERSION`] (older ones are read);
//! `state.bin` parses completely and holds a seal config and keyring.
//! Where `state.bin` goes meanwhile depends on the node. A lone node (a
//! single server, a drill's node) stages its pairs as they arrive, on a
//! thread beside the one reading the archive, into the state machine's
//! staging table, which no reader sees (`stage_streamed`); a node of a
//! cluster spools it to a file in the data directory (removed afterwards,
//! or at the next start after a crash) and stages it through the Raft log
//! only once every check passed (`stage_spooled`), so no entry is proposed
//! for a damaged upload. Either way live data is untouched until every
//! check passed: a refused upload drops what was staged. Then the pairs are
//! swapped in through Raft (see `storage::raft::restore`), with the
//! unsealed subsystems torn down ([`Core::replace_state`]); afterwards the
//! node reopens with its root key if the restored keyring opens with it (a
//! snapshot of this cluster), else it stays sealed and the source cluster's
//! unseal keys unseal it.
//!
//! Both paths need `sudo` (root-protected in Vault), a sealed node answers
//! 503, and requests and responses are audited like any other (this module
//! runs the pipeline's token, ACL and audit steps itself because its bodies
//! are streams, not JSON).

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::audit;
use crate::barrier::Barrier;
use crate::core::{Core, Unsealed};
use crate::error::{CoreError, Result};
use crate::logical::{Operation, Request, Response, Secret};
use crate::state_digest::StateDigest;
use crate::storage::raft::restore::{DirectRestore, StagedRestore};
use crate::storage::raft::snapshot::SectionSink;
use crate::storage::raft::{RaftStorage, SnapshotInfo, StateExport, StoreError};
use crate::token::TokenEntry;

/// Save (GET) and restore from this cluster (POST).
pub const SNAPSHOT_PATH: &str = "sys/storage/raft/snapshot";
/// Restore from any cluster (POST).
pub const SNAPSHOT_FORCE_PATH: &str = "sys/storage/raft/snapshot-force";
/// The newest `state.bin` format this server reads and the one it writes
/// (2: batched, see `storage::raft::snapshot`; 1, Raft's own layout, is
/// still read).
pub const STATE_VERSION: u32 = 2;

const META_FILE: &str = "meta.json";
const STATE_FILE: &str = "state.bin";
const SUMS_FILE: &str = "SHA256SUMS";
const SEALED_SUMS_FILE: &str = "SHA256SUMS.sealed";
/// The barrier key the sealed sums are bound to (associated data only;
/// nothing is stored there).
const SUMS_AAD: &str = "core/raft/snapshot/SHA256SUMS";
/// Largest `meta.json` and sum files read, as Vault.
const SMALL_FILE_MAX: u64 = 8192;
/// Bytes per chunk of the streamed archive, and chunks in flight.
const STREAM_CHUNK: usize = 256 * 1024;
const STREAM_DEPTH: usize = 8;
/// How much of a refused upload is read and dropped so the client sees the
/// answer rather than a reset connection.
const DRAIN_MAX: usize = 64 * 1024 * 1024;

/// One restore at a time: a second would drop the first one's staged pairs.
static RESTORE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether `path` (without `/v1/`) is served here.
pub fn is_snapshot_path(path: &str) -> bool {
    path == SNAPSHOT_PATH || path == SNAPSHOT_FORCE_PATH
}

/// Vault's `meta.json` (hashicorp/raft's `SnapshotMeta`) with the version
/// of what `state.bin` holds.
#[derive(Debug, Serialize, Deserialize)]
struct ArchiveMeta {
    #[serde(rename = "Version")]
    version: u32,
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Index")]
    index: u64,
    #[serde(rename = "Term")]
    term: u64,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "CustosStateVersion", default)]
    state_version: Option<u32>,
    #[serde(rename = "CustosPairs", default)]
    pairs: u64,
}

/// A caller who passed the token, ACL (with sudo) and request-audit steps.
struct Grant {
    unsealed: Arc<Unsealed>,
    entry: Arc<TokenEntry>,
    req: Request,
}

fn audit_error(e: &custos_audit::AuditError, what: &str) -> CoreError {
    if e.is_disk_full() {
        CoreError::Unavailable(
            "audit log storage is full: requests are refused until space is freed".into(),
        )
    } else {
        tracing::error!(error = %e, "audit: no device recorded the {what}; refusing it");
        CoreError::Audit(format!("no audit device recorded the {what}"))
    }
}

/// The pipeline's steps before the backend (see `Core::handle`).
async fn authorize(
    core: &Core,
    op: Operation,
    path: &str,
    token: Option<Secret>,
    remote: Option<std::net::SocketAddr>,
) -> Result<Grant> {
    let unsealed = core.unsealed()?;
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(CoreError::PermissionDenied)?;
    let entry = Arc::new(
        unsealed
            .tokens
            .lookup(token.expose())
            .await?
            .ok_or(CoreError::PermissionDenied)?,
    );
    let mut req = Request::new(op, path);
    req.client_token = Some(token);
    req.remote_addr = remote;
    req.auth = Some(entry.clone());
    if let Some((mounted, rel)) = unsealed.router.route(path) {
        req.mount_point = mounted.entry.path.clone();
        req.mount_type = mounted.entry.mount_type.clone();
        req.relative_path = rel;
    }
    let acl = unsealed.policies.acl_for(&entry.policies).await?;
    let decision = acl.check_request(path, op, &req.data);
    req.has_sudo = decision.sudo;
    let denied = !decision.allowed || !decision.sudo;
    let event = audit::request_event(&req, Some(&entry), denied.then_some("permission denied"));
    unsealed
        .audit
        .log_request(event)
        .await
        .map_err(|e| audit_error(&e, "request"))?;
    let grant = Grant {
        unsealed,
        entry,
        req,
    };
    if denied {
        return refuse(&grant, CoreError::PermissionDenied).await;
    }
    match grant.unsealed.tokens.use_token(&grant.entry).await? {
        Some(_) => Ok(grant),
        None => refuse(&grant, CoreError::PermissionDenied).await,
    }
}

/// Audit the response (fail closed).
async fn finish(grant: &Grant, result: &Result<Response>) -> Result<()> {
    let event = audit::response_event(&grant.req, Some(&grant.entry), result);
    grant
        .unsealed
        .audit
        .log_response(event)
        .await
        .map_err(|e| audit_error(&e, "response"))
}

fn error_response(e: &CoreError) -> axum::response::Response {
    let body = serde_json::to_vec(&serde_json::json!({ "errors": e.messages() }))
        .unwrap_or_else(|_| b"{\"errors\":[]}".to_vec());
    let mut resp = axum::response::Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serve one request to [`SNAPSHOT_PATH`] or [`SNAPSHOT_FORCE_PATH`].
pub async fn serve(
    core: &Arc<Core>,
    method: &Method,
    path: &str,
    token: Option<Secret>,
    remote: Option<std::net::SocketAddr>,
    body: Body,
) -> axum::response::Response {
    let result = match (method, path) {
        (&Method::GET, SNAPSHOT_PATH) => save(core, token, remote).await,
        (&Method::POST | &Method::PUT, SNAPSHOT_PATH) => {
            restore(core, path, token, remote, body, false).await
        }
        (&Method::POST | &Method::PUT, SNAPSHOT_FORCE_PATH) => {
            restore(core, path, token, remote, body, true).await
        }
        _ => {
            drain(body).await;
            Err(CoreError::UnsupportedOperation)
        }
    };
    result.unwrap_or_else(|e| error_response(&e))
}

fn raft_of(core: &Core) -> Result<Arc<RaftStorage>> {
    core.raft()
        .cloned()
        .ok_or_else(|| CoreError::bad_request("raft storage is not in use"))
}

// ---------------------------------------------------------------------------
// Save
// ---------------------------------------------------------------------------

async fn save(
    core: &Arc<Core>,
    token: Option<Secret>,
    remote: Option<std::net::SocketAddr>,
) -> Result<axum::response::Response> {
    let grant = authorize(core, Operation::Read, SNAPSHOT_PATH, token, remote).await?;
    let opened = match raft_of(core) {
        Ok(raft) => raft.open_export().await,
        Err(e) => Err(e),
    };
    let state = match opened {
        Ok(o) => Arc::new(o),
        Err(e) => return refuse(&grant, e).await,
    };
    finish(&grant, &Ok(Response::default())).await?;
    let mut resp = axum::response::Response::new(Body::from_stream(archive_of(core, state)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    Ok(resp)
}

/// The archive of the exported `state`, made on a blocking thread into a
/// bounded channel: the stream a save answers with and an automated
/// snapshot uploads.
fn archive_of(
    core: &Core,
    state: Arc<StateExport>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    let info = state.info();
    let meta = ArchiveMeta {
        version: 1,
        id: info.snapshot_id,
        index: info.last_log_index,
        term: info.last_log_term,
        size: info.size,
        state_version: Some(STATE_VERSION),
        pairs: info.key_count,
    };
    let barrier = core.barrier.clone();
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(STREAM_DEPTH);
    let writer_tx = tx.clone();
    let task = tokio::task::spawn_blocking(move || {
        let out = ChannelWriter::new(writer_tx);
        if let Err(e) = write_archive(out, &meta, &state, &barrier) {
            tracing::warn!(error = %e, "raft snapshot stream aborted");
            let _ = tx.blocking_send(Err(e));
        }
    });
    archive_stream(rx, task)
}

/// A snapshot being taken in-process (the automated snapshot agent): what
/// it is, the archive as `GET sys/storage/raft/snapshot` streams it, and
/// the digest of the same state ([`crate::state_digest`]), computed on
/// another thread while the archive streams.
pub struct SnapshotExport {
    pub info: SnapshotInfo,
    pub archive: std::pin::Pin<Box<dyn futures::Stream<Item = io::Result<Bytes>> + Send>>,
    pub digest: JoinHandle<Result<StateDigest>>,
}

/// Take a snapshot of everything applied, for an in-process caller: no
/// token, ACL or audit (the caller is the server itself, on a schedule its
/// operators configured through the audited `snapshot-auto` API). The node
/// must be unsealed.
pub async fn export(core: &Arc<Core>) -> Result<SnapshotExport> {
    core.unsealed()?;
    let raft = raft_of(core)?;
    let state = Arc::new(raft.open_export().await?);
    let info = state.info();
    let barrier = core.barrier.clone();
    let for_digest = state.clone();
    let digest = tokio::task::spawn_blocking(move || {
        crate::state_digest::digest_export(&for_digest, &barrier)
    });
    let archive = Box::pin(archive_of(core, state));
    Ok(SnapshotExport {
        info,
        archive,
        digest,
    })
}

/// Audit a failure as the response, then return it.
async fn refuse<T>(grant: &Grant, e: CoreError) -> Result<T> {
    let result: Result<Response> = Err(e);
    finish(grant, &result).await?;
    match result {
        Err(e) => Err(e),
        Ok(_) => Err(CoreError::internal("refusal without an error")),
    }
}

/// The response body: chunks from the writer thread, then its join (a
/// panic there aborts the body rather than ending it cleanly).
fn archive_stream(
    rx: mpsc::Receiver<io::Result<Bytes>>,
    task: JoinHandle<()>,
) -> impl futures::Stream<Item = io::Result<Bytes>> {
    futures::stream::unfold((rx, Some(task)), |(mut rx, task)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, task))),
            None => {
                let task = task?;
                match task.await {
                    Ok(()) => None,
                    Err(e) => Some((Err(io::Error::other(e.to_string())), (rx, None))),
                }
            }
        }
    })
}

/// A `Write` into the bounded channel of the response body.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(STREAM_CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        // A whole chunk up front: growing from empty reallocated and copied
        // it several times per chunk.
        self.buf.reserve(STREAM_CHUNK);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A `Read` that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn tar_header(name: &str, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    );
    h.set_cksum();
    Ok(h)
}

fn sums_text(meta: &[u8; 32], state: &[u8; 32]) -> String {
    format!(
        "{}  {META_FILE}\n{}  {STATE_FILE}\n",
        hex::encode(meta),
        hex::encode(state)
    )
}

/// A gzip writer that deflates some sections (level 1) and stores others
/// (deflate's stored blocks: a copy and a CRC) — barrier ciphertext, which
/// no level shrinks and whose deflating took most of a save's CPU. One
/// gzip member, one deflate stream: before stored blocks the compressor is
/// sync-flushed (byte-aligned, an empty stored block, 5 bytes) and reset,
/// so what it writes afterwards never refers back across the stored bytes
/// it did not see. (flate2's `set_level` cannot serve: on the zlib-rs
/// backend it fails whenever it would have to flush.)
struct LevelledGz<W: Write> {
    out: W,
    deflate: flate2::Compress,
    crc: flate2::Crc,
    buf: Vec<u8>,
    stored: bool,
}

/// Output buffer of [`LevelledGz`] per deflate call.
const GZ_OUT: usize = 256 * 1024;
/// Largest stored block (its length is a `u16`).
const STORED_BLOCK: usize = 65_535;

impl<W: Write> LevelledGz<W> {
    fn new(mut out: W) -> io::Result<Self> {
        // ID1 ID2, CM deflate, no flags, no mtime, XFL 0, OS unknown.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])?;
        Ok(LevelledGz {
            out,
            deflate: flate2::Compress::new(flate2::Compression::fast(), false),
            crc: flate2::Crc::new(),
            buf: Vec::with_capacity(GZ_OUT),
            stored: false,
        })
    }

    /// Deflate `input` with `flush`, writing all output produced.
    fn run(&mut self, mut input: &[u8], flush: flate2::FlushCompress) -> io::Result<()> {
        loop {
            self.buf.clear();
            let before = self.deflate.total_in();
            let status = self
                .deflate
                .compress_vec(input, &mut self.buf, flush)
                .map_err(io::Error::other)?;
            let used =
                usize::try_from(self.deflate.total_in() - before).map_err(io::Error::other)?;
            input = &input[used..];
            if !self.buf.is_empty() {
                self.out.write_all(&self.buf)?;
            }
            let full = self.buf.len() == self.buf.capacity();
            let done = match flush {
                flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
                flate2::FlushCompress::None => input.is_empty(),
                _ => input.is_empty() && !full,
            };
            if done {
                return Ok(());
            }
        }
    }

    /// Store (`true`) or deflate what is written from now on.
    fn set_stored(&mut self, stored: bool) -> io::Result<()> {
        if stored && !self.stored {
            self.run(&[], flate2::FlushCompress::Sync)?;
            self.deflate.reset();
        }
        self.stored = stored;
        Ok(())
    }

    /// `data` as non-final stored blocks.
    fn store(&mut self, data: &[u8]) -> io::Result<()> {
        for block in data.chunks(STORED_BLOCK) {
            let len = block.len() as u16;
            let [l0, l1] = len.to_le_bytes();
            let [n0, n1] = (!len).to_le_bytes();
            self.out.write_all(&[0, l0, l1, n0, n1])?;
            self.out.write_all(block)?;
        }
        Ok(())
    }

    /// End the deflate stream (the compressor's final block), write the
    /// gzip trailer, hand back the output.
    fn finish(mut self) -> io::Result<W> {
        self.run(&[], flate2::FlushCompress::Finish)?;
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for LevelledGz<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.crc.update(data);
        if self.stored {
            self.store(data)?;
        } else {
            self.run(data, flate2::FlushCompress::None)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A section of `state.bin` on its way from the reading thread to the
/// gzip writer: `true` for a values section (stored), `false` for keys.
type Section = (bool, Vec<u8>);
/// Sections in flight between the two threads of a save.
const SECTIONS_IN_FLIGHT: usize = 4;

/// The reading side of a save: hashes `state.bin` and hands its
/// sections to the gzip writer on the other thread.
struct SectionSender {
    tx: std::sync::mpsc::SyncSender<Section>,
    hash: Sha256,
}

impl SectionSender {
    fn send(&mut self, stored: bool, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.tx
            .send((stored, bytes.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the archive writer stopped"))
    }
}

impl SectionSink for SectionSender {
    fn keys(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send(false, bytes)
    }

    fn values(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send(true, bytes)
    }
}

/// Write the archive (see the module docs) to `out`; `state` is written as
/// `state.bin` in the batched layout (version 2) of `meta.size` bytes. Two
/// threads share the work: a scoped one reads the state machine, batches
/// and hashes it, this one deflates or stores each section and frames the
/// archive.
fn write_archive(
    out: ChannelWriter,
    meta: &ArchiveMeta,
    state: &StateExport,
    barrier: &Barrier,
) -> io::Result<()> {
    let gz = LevelledGz::new(out)?;
    let mut tar = tar::Builder::new(gz);
    let mut meta_json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    meta_json.push(b'\n');
    let meta_sum: [u8; 32] = Sha256::digest(&meta_json).into();
    tar.append(
        &tar_header(META_FILE, meta_json.len() as u64)?,
        &meta_json[..],
    )?;
    // state.bin by hand (header, data, padding to the 512-byte record), so
    // its sections go through the gzip writer at their own levels.
    let gz = tar.get_mut();
    gz.write_all(tar_header(STATE_FILE, meta.size)?.as_bytes())?;
    let state_sum: [u8; 32] = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Section>(SECTIONS_IN_FLIGHT);
        let reader = scope.spawn(move || {
            let mut sink = SectionSender {
                tx,
                hash: Sha256::new(),
            };
            state.write_batched(&mut sink)?;
            Ok::<_, io::Error>(sink.hash.finalize().into())
        });
        let mut written = Ok(());
        for (stored, bytes) in rx.iter() {
            if let Err(e) = gz.set_stored(stored).and_then(|()| gz.write_all(&bytes)) {
                written = Err(e);
                break;
            }
        }
        // After a failed write, dropping the receiver stops the reader.
        drop(rx);
        let read = reader
            .join()
            .map_err(|_| io::Error::other("the snapshot reader panicked"))?;
        written?;
        read
    })?;
    gz.set_stored(false)?;
    let pad = (512 - (meta.size % 512) as usize) % 512;
    gz.write_all(&[0u8; 512][..pad])?;
    let sums = sums_text(&meta_sum, &state_sum);
    tar.append(&tar_header(SUMS_FILE, sums.len() as u64)?, sums.as_bytes())?;
    let sealed = barrier
        .encrypt(SUMS_AAD, sums.as_bytes())
        .map_err(|e| io::Error::other(format!("sealing the snapshot sums: {e}")))?;
    tar.append(
        &tar_header(SEALED_SUMS_FILE, sealed.len() as u64)?,
        &sealed[..],
    )?;
    let gz = tar.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()
}

// ---------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------

/// What the upload held, once read to its end.
struct Upload {
    meta: Vec<u8>,
    meta_sum: [u8; 32],
    state_sum: [u8; 32],
    state_seen: bool,
    sums: Option<Vec<u8>>,
    sealed: Option<Vec<u8>>,
}

/// A `Read` over the request body's chunks, sent by the async side.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Where the archive reader puts `state.bin`.
enum StateTarget {
    /// A file in the data directory, checked and staged once the whole
    /// upload is in (a node of a cluster stages through the Raft log).
    Spool(PathBuf),
    /// The thread staging it as it arrives (a lone node): its length from
    /// the tar header, then its bytes. If the stager stops (it found the
    /// file damaged), the rest of `state.bin` is still read and hashed, so
    /// the archive's own checks come first, as with a spooled file.
    Stream {
        len: Option<tokio::sync::oneshot::Sender<u64>>,
        tx: Option<mpsc::Sender<Bytes>>,
    },
}

impl StateTarget {
    /// Pass `state.bin` on; returns its SHA-256.
    fn take(&mut self, entry: &mut impl Read, len: u64) -> std::result::Result<[u8; 32], String> {
        let mut reader = HashingReader {
            inner: entry,
            hash: Sha256::new(),
        };
        match self {
            StateTarget::Spool(spool) => {
                let file = std::fs::File::create(&*spool)
                    .map_err(|e| format!("spooling state.bin: {e}"))?;
                let mut out = io::BufWriter::with_capacity(STREAM_CHUNK, file);
                io::copy(&mut reader, &mut out).map_err(unreadable)?;
                out.flush()
                    .map_err(|e| format!("spooling state.bin: {e}"))?;
            }
            StateTarget::Stream { len: len_tx, tx } => {
                if let Some(l) = len_tx.take() {
                    let _ = l.send(len);
                }
                let mut buf = vec![0u8; STREAM_CHUNK];
                loop {
                    let n = reader.read(&mut buf).map_err(unreadable)?;
                    if n == 0 {
                        break;
                    }
                    let stopped = match tx.as_ref() {
                        Some(t) => t.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err(),
                        None => false,
                    };
                    if stopped {
                        *tx = None;
                    }
                }
                // The end of state.bin: the stager finishes while the rest
                // of the archive is read.
                *tx = None;
            }
        }
        Ok(reader.hash.finalize().into())
    }
}

/// The 400 message for an upload that does not read as a gzip'd tar.
fn unreadable(e: io::Error) -> String {
    format!("failed to read the snapshot archive (truncated, or not a gzip'd tar): {e}")
}

/// Removes the spooled `state.bin` however the restore ends.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn read_small(entry: &mut impl Read, name: &str) -> std::result::Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    entry
        .take(SMALL_FILE_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("failed to read {name} from the snapshot: {e}"))?;
    if buf.len() as u64 > SMALL_FILE_MAX {
        return Err(format!(
            "{name} in the snapshot is larger than {SMALL_FILE_MAX} bytes"
        ));
    }
    Ok(buf)
}

/// Read the whole archive from `input`, passing `state.bin` to `state`.
/// Errors are the 400 messages.
fn read_archive(input: impl Read, mut state: StateTarget) -> std::result::Result<Upload, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
    let mut up = Upload {
        meta: Vec::new(),
        meta_sum: [0; 32],
        state_sum: [0; 32],
        state_seen: false,
        sums: None,
        sealed: None,
    };
    let mut meta_seen = false;
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let name = entry
            .path()
            .map_err(unreadable)?
            .to_string_lossy()
            .into_owned();
        match name.as_str() {
            META_FILE => {
                up.meta = read_small(&mut entry, META_FILE)?;
                up.meta_sum = Sha256::digest(&up.meta).into();
                meta_seen = true;
            }
            STATE_FILE => {
                let len = entry.size();
                up.state_sum = state.take(&mut entry, len)?;
                up.state_seen = true;
            }
            SUMS_FILE => up.sums = Some(read_small(&mut entry, SUMS_FILE)?),
            SEALED_SUMS_FILE => up.sealed = Some(read_small(&mut entry, SEALED_SUMS_FILE)?),
            other => return Err(format!("unexpected file {other:?} in snapshot")),
        }
    }
    // The tar ends before the gzip stream does: read that to its end too,
    // which checks the gzip CRC and length (truncation, corruption).
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(unreadable)?;
    if !meta_seen {
        return Err(format!("snapshot archive has no {META_FILE}"));
    }
    if !up.state_seen {
        return Err(format!("snapshot archive has no {STATE_FILE}"));
    }
    Ok(up)
}

/// Check `SHA256SUMS` text against the two files' hashes.
fn verify_sums(text: &[u8], up: &Upload) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(text)
        .map_err(|_| "failed checking integrity of snapshot: sums are not text".to_string())?;
    let (mut meta_ok, mut state_ok) = (false, false);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, file) = line
            .split_once("  ")
            .ok_or_else(|| format!("failed checking integrity of snapshot: bad line {line:?}"))?;
        let expected = match file {
            META_FILE => &up.meta_sum,
            STATE_FILE => &up.state_sum,
            other => {
                return Err(format!(
                    "failed checking integrity of snapshot: list has a hash for unknown {other:?}"
                ));
            }
        };
        if !sum.eq_ignore_ascii_case(&hex::encode(expected)) {
            return Err(format!(
                "failed checking integrity of snapshot: hash check failed for {file:?}"
            ));
        }
        match file {
            META_FILE => meta_ok = true,
            _ => state_ok = true,
        }
    }
    for (ok, file) in [(meta_ok, META_FILE), (state_ok, STATE_FILE)] {
        if !ok {
            return Err(format!(
                "failed checking integrity of snapshot: list missing hash for {file:?}"
            ));
        }
    }
    Ok(())
}

/// Feed the request body to the archive reader on a blocking thread.
async fn receive(body: Body, state: StateTarget) -> std::result::Result<Upload, String> {
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_DEPTH);
    let reader = tokio::task::spawn_blocking(move || {
        let input = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        read_archive(input, state)
    });
    let mut body = body;
    let mut body_error = None;
    let mut drained = 0usize;
    let mut feeding = true;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => {
                body_error = Some(format!("failed to read the request body: {e}"));
                break;
            }
        };
        if feeding {
            if tx.send(data).await.is_err() {
                // The reader stopped (refused the archive): read and drop the
                // rest, so the client sees the answer.
                feeding = false;
            }
        } else {
            drained += data.len();
            if drained > DRAIN_MAX {
                break;
            }
        }
    }
    drop(tx);
    let read = reader
        .await
        .map_err(|e| format!("reading the snapshot failed: {e}"))?;
    match (read, body_error) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(e)) => Err(e),
        (Ok(up), None) => Ok(up),
    }
}

async fn drain(mut body: Body) {
    let mut n = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        n += frame.data_ref().map(Bytes::len).unwrap_or_default();
        if n > DRAIN_MAX {
            break;
        }
    }
}

async fn restore(
    core: &Arc<Core>,
    path: &str,
    token: Option<Secret>,
    remote: Option<std::net::SocketAddr>,
    body: Body,
    force: bool,
) -> Result<axum::response::Response> {
    let grant = match authorize(core, Operation::Update, path, token, remote).await {
        Ok(g) => g,
        Err(e) => {
            drain(body).await;
            return Err(e);
        }
    };
    let result = restore_checked(core, Some(&grant), body, force).await;
    match result {
        Ok(_) => {
            let mut r = axum::response::Response::new(Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        Err(e) => Err(e),
    }
}

/// Everything after authorization; the response is audited before the
/// state is swapped (the audit devices are torn down with it, as Vault
/// answers before it applies).
async fn restore_checked(
    core: &Arc<Core>,
    grant: Option<&Grant>,
    body: Body,
    force: bool,
) -> Result<bool> {
    // Held until the swap: another restore's begin would drop these pairs.
    let _one = RESTORE.lock().await;
    let raft = match raft_of(core) {
        Ok(r) => r,
        Err(e) => {
            drain(body).await;
            return refuse_if(grant, e).await;
        }
    };
    let started = std::time::Instant::now();
    let staged = match raft.direct_restore().await {
        Some(direct) => stage_streamed(core, &raft, direct, body, force).await,
        None => stage_spooled(core, &raft, body, force).await,
    };
    let (staged, received) = match staged {
        Ok(s) => s,
        Err(e) => return refuse_if(grant, e).await,
    };
    let staged_at = started.elapsed();
    let ok = Ok(Response {
        status: Some(204),
        ..Default::default()
    });
    if let Err(e) = finish_if(grant, &ok).await {
        if let Err(abort) = raft.abort_restore().await {
            tracing::warn!(error = %abort, "dropping an unaudited restore's staged pairs");
        }
        return Err(e);
    }
    let snapshot_id = staged.info.snapshot_id.clone();
    let commit = {
        let raft = raft.clone();
        async move { raft.commit_restore(staged).await.map(|_| ()) }
    };
    let unsealed = match core.replace_state(commit).await {
        Ok(u) => u,
        Err(e) => {
            if let Err(abort) = raft.abort_restore().await {
                tracing::warn!(error = %abort, "dropping a failed restore's staged pairs");
            }
            return Err(e);
        }
    };
    tracing::info!(
        snapshot_id = %snapshot_id,
        force,
        unsealed,
        received_ms = received.as_millis() as u64,
        staged_ms = staged_at.as_millis() as u64,
        done_ms = started.elapsed().as_millis() as u64,
        "raft snapshot restored{}",
        if unsealed { "" } else { "; sealed until the source cluster's unseal keys are given" }
    );
    Ok(unsealed)
}

/// The archive's own checks, once it is read to its end, in this order,
/// each failure a 400 naming the check: both sum files are there; the
/// sealed sums open with this barrier's keyring (skipped when `force`d: a
/// snapshot of another cluster); both sum files match; `meta.json` decodes
/// and its state version is one this server reads.
fn check_upload(core: &Core, up: &Upload, force: bool) -> Result<()> {
    let sums = up
        .sums
        .as_deref()
        .ok_or_else(|| CoreError::BadRequest(format!("snapshot archive has no {SUMS_FILE}")))?;
    let sealed = up.sealed.as_deref().ok_or_else(|| {
        CoreError::BadRequest(format!("snapshot archive has no {SEALED_SUMS_FILE}"))
    })?;
    if !force {
        let opened = core.barrier.decrypt(SUMS_AAD, sealed).map_err(|_| {
            CoreError::bad_request(
                "could not verify hash file, possibly the snapshot is using a different set \
                 of unseal keys; use the snapshot-force API to bypass this check",
            )
        })?;
        verify_sums(&opened, up).map_err(CoreError::BadRequest)?;
    }
    verify_sums(sums, up).map_err(CoreError::BadRequest)?;
    let meta: ArchiveMeta = serde_json::from_slice(&up.meta)
        .map_err(|e| CoreError::BadRequest(format!("failed to decode snapshot metadata: {e}")))?;
    match meta.state_version {
        None => Err(CoreError::bad_request(
            "snapshot was not taken by Custos: meta.json has no CustosStateVersion",
        )),
        Some(v) if v > STATE_VERSION => Err(CoreError::BadRequest(format!(
            "snapshot state version {v} is newer than this server supports ({STATE_VERSION})"
        ))),
        Some(_) => Ok(()),
    }
}

/// A node of a cluster: spool `state.bin` to the data directory, check the
/// archive, then the whole state file, and only then stage it through the
/// Raft log (every node replays the staging). Returns the staged restore
/// and how long the upload took to arrive.
async fn stage_spooled(
    core: &Core,
    raft: &Arc<RaftStorage>,
    body: Body,
    force: bool,
) -> Result<(StagedRestore, std::time::Duration)> {
    let spool = Spool(raft.data_dir().join(format!(
        "{}.restore-{}.tmp",
        crate::storage::raft::SNAPSHOT_FILE,
        uuid::Uuid::new_v4().simple()
    )));
    let started = std::time::Instant::now();
    let up = receive(body, StateTarget::Spool(spool.0.clone()))
        .await
        .map_err(CoreError::BadRequest)?;
    let received = started.elapsed();
    check_upload(core, &up, force)?;
    let info = raft.check_state_file(&spool.0).await?;
    let staged = raft.stage_restore(&spool.0, info).await?;
    Ok((staged, received))
}

/// A lone node: stage `state.bin` straight into the state machine as it
/// arrives, on a thread of its own beside the one reading the archive (so
/// the upload, its gzip and its hashes overlap the staging, and nothing is
/// spooled), then check the archive. Staging touches no live data, so any
/// failure — the archive's checks, in the same order as for a spooled file,
/// then the state file's own — drops what was staged and changes nothing.
async fn stage_streamed(
    core: &Core,
    raft: &Arc<RaftStorage>,
    direct: DirectRestore,
    body: Body,
    force: bool,
) -> Result<(StagedRestore, std::time::Duration)> {
    let (len_tx, len_rx) = tokio::sync::oneshot::channel::<u64>();
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_DEPTH);
    let stager = {
        let raft = raft.clone();
        tokio::spawn(async move {
            let open = move || {
                let len = len_rx.blocking_recv().map_err(|_| {
                    StoreError::Format(format!("snapshot archive has no {STATE_FILE}"))
                })?;
                let input = ChannelReader {
                    rx,
                    current: Bytes::new(),
                };
                Ok((input, len))
            };
            raft.stage_direct(direct, open).await
        })
    };
    let started = std::time::Instant::now();
    let target = StateTarget::Stream {
        len: Some(len_tx),
        tx: Some(tx),
    };
    let checked = receive(body, target)
        .await
        .map_err(CoreError::BadRequest)
        .and_then(|up| check_upload(core, &up, force));
    let received = started.elapsed();
    let staged = stager
        .await
        .map_err(|e| CoreError::Internal(format!("staging the restore: {e}")))
        .and_then(|s| s);
    match (checked, staged) {
        (Ok(()), Ok(staged)) => Ok((staged, received)),
        (Err(e), Ok(staged)) => {
            if let Err(abort) = raft.abort_restore().await {
                tracing::warn!(error = %abort, "dropping a refused restore's staged pairs");
            }
            drop(staged);
            Err(e)
        }
        // A failed staging dropped its pairs itself.
        (Err(e), Err(_)) | (Ok(()), Err(e)) => Err(e),
    }
}

/// Restore a Vault-format snapshot archive read from `archive` into this
/// node, in-process (a restore drill's fresh node): the same checks and
/// swap as `POST sys/storage/raft/snapshot[-force]`, without a token or an
/// audit entry. Returns whether the node is unsealed afterwards (a snapshot
/// of another cluster leaves it sealed until that cluster's keys are given).
pub async fn restore_archive<S>(core: &Arc<Core>, archive: S, force: bool) -> Result<bool>
where
    S: futures::Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    core.unsealed()?;
    restore_checked(core, None, Body::from_stream(archive), force).await
}

/// [`finish`] for a caller that has a grant; nothing to audit otherwise.
async fn finish_if(grant: Option<&Grant>, result: &Result<Response>) -> Result<()> {
    match grant {
        Some(g) => finish(g, result).await,
        None => Ok(()),
    }
}

/// [`refuse`] for a caller that may have no grant.
async fn refuse_if<T>(grant: Option<&Grant>, e: CoreError) -> Result<T> {
    match grant {
        Some(g) => refuse(g, e).await,
        None => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sections written at either level come back whole from one gzip
    /// member, and the stored ones are stored (incompressible input does
    /// not grow beyond the stored blocks' framing; compressible input
    /// written as keys shrinks).
    #[test]
    fn levelled_gzip_round_trips() {
        let mut noise = vec![0u8; 300_000];
        let mut x: u32 = 0x1234_5678;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("logical/key-{i:06}/").into_bytes())
            .collect();
        let mut gz = LevelledGz::new(Vec::new()).expect("header");
        let mut want = Vec::new();
        for round in 0..3 {
            gz.set_stored(false).expect("level 1");
            gz.write_all(&text).expect("keys");
            gz.set_stored(true).expect("level 0");
            gz.write_all(&noise[round * 1000..]).expect("values");
            want.extend_from_slice(&text);
            want.extend_from_slice(&noise[round * 1000..]);
        }
        gz.set_stored(false).expect("level 1");
        gz.write_all(b"tail").expect("tail");
        want.extend_from_slice(b"tail");
        let out = gz.finish().expect("finish");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .expect("gunzip");
        assert!(back == want, "round trip differs");
        let stored: usize = (0..3).map(|r| noise.len() - r * 1000).sum();
        assert!(out.len() < stored + 3 * text.len() / 2, "{}", out.len());
        assert!(out.len() > stored, "{}", out.len());
    }
}
