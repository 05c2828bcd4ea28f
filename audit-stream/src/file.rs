//! The `file` audit device: one JSON line per event, fsynced before `log`
//! returns, with group commit.
//!
//! Events come from the broker ([`crate::broker::AuditBroker`]). The calling
//! task hashes its own copy of the event with the device's salt, serializes it
//! (Vault's `prefix` option goes in front, a newline at the end) and sends the
//! line with a oneshot through a bounded channel to the device's writer
//! thread. The writer owns the file: it takes everything queued (up to a
//! batch limit), writes it with one `write_all`, calls `sync_data` once, and
//! then completes every oneshot in the batch with the same result. Many
//! concurrent requests therefore share one fsync, and the next batch queues
//! up while the current one is being synced.
//!
//! On an I/O error every waiter of the batch gets the error, and the writer
//! cuts the file back to where the batch started so no torn line is left (if
//! it cannot, the next batch starts with a newline so the torn line stays on
//! its own; a torn last line left by a crash is handled the same way when the
//! file is opened). If the file cannot be opened (e.g. after `reopen` found its
//! directory gone), each batch tries again and fails until it can.
//!
//! The writer is a plain OS thread (file I/O blocks), so opening a device
//! needs no async runtime. [`FileDevice::shutdown`] closes the channel, lets
//! the writer drain and sync what is queued, and joins it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::broker::AuditDevice;
use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::hash::{HashOptions, Salt, elide_list_response, hash_event, hmac_sha256};
use crate::metrics;

/// File name used when the configured `file_path` is a directory.
pub const DEFAULT_FILE_NAME: &str = "audit.log";
/// Events waiting for the writer before callers wait for room.
const CHANNEL_CAPACITY: usize = 16 * 1024;
/// Most events in one group-commit batch.
const MAX_BATCH_EVENTS: usize = 4096;
/// Most bytes in one group-commit batch (a batch may exceed it by one line).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// How the device formats events. Only JSON is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
}

/// Options of a file device (Vault's `file` audit device options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOptions {
    /// Permissions set on the file; `None` leaves them alone (Vault's `mode=0`).
    pub mode: Option<u32>,
    pub log_raw: bool,
    pub hmac_accessor: bool,
    /// Written before each JSON line.
    pub prefix: String,
    pub format: Format,
    /// Replace `keys` / `key_info` of list responses by their counts.
    pub elide_list_responses: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            mode: Some(0o600),
            log_raw: false,
            hmac_accessor: true,
            prefix: String::new(),
            format: Format::Json,
            elide_list_responses: false,
        }
    }
}

/// Go's `strconv.ParseBool`, which Vault uses for option values.
fn parse_bool(name: &str, v: &str) -> Result<bool, AuditError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(AuditError::InvalidOption {
            name: name.into(),
            reason: format!("{v:?} is not a boolean"),
        }),
    }
}

impl FileOptions {
    /// The options as `sys/audit` enables them. Returns the file path
    /// (`file_path`, or its alias `path`) and the parsed options; unknown
    /// options are an error.
    pub fn from_map(
        options: &BTreeMap<String, String>,
    ) -> Result<(PathBuf, FileOptions), AuditError> {
        let mut out = FileOptions::default();
        let mut file_path = None;
        for (k, v) in options {
            match k.as_str() {
                "file_path" | "path" => file_path = Some(PathBuf::from(v)),
                "mode" => {
                    let mode =
                        u32::from_str_radix(v, 8).map_err(|_| AuditError::InvalidOption {
                            name: k.clone(),
                            reason: format!("{v:?} is not an octal file mode"),
                        })?;
                    if mode > 0o7777 {
                        return Err(AuditError::InvalidOption {
                            name: k.clone(),
                            reason: format!("{v:?} is not a file mode"),
                        });
                    }
                    out.mode = (mode != 0).then_some(mode);
                }
                "log_raw" => out.log_raw = parse_bool(k, v)?,
                "hmac_accessor" => out.hmac_accessor = parse_bool(k, v)?,
                "elide_list_responses" => out.elide_list_responses = parse_bool(k, v)?,
                "prefix" => out.prefix = v.clone(),
                "format" => match v.as_str() {
                    "json" | "" => out.format = Format::Json,
                    other => return Err(AuditError::UnsupportedFormat(other.into())),
                },
                _ => {
                    return Err(AuditError::InvalidOption {
                        name: k.clone(),
                        reason: "unknown option for a file audit device".into(),
                    });
                }
            }
        }
        let file_path = file_path
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| AuditError::InvalidOption {
                name: "file_path".into(),
                reason: "required".into(),
            })?;
        Ok((file_path, out))
    }

    fn hash_options(&self) -> HashOptions {
        HashOptions {
            log_raw: self.log_raw,
            hmac_accessor: self.hmac_accessor,
        }
    }
}

/// Counters of a file device, shared with its writer thread.
#[derive(Debug, Default)]
struct Stats {
    fsyncs: AtomicU64,
    events: AtomicU64,
    /// The mount path, the `path` label of the writer's metrics.
    label: RwLock<String>,
}

impl Stats {
    fn label(&self) -> String {
        match self.label.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

type Done = oneshot::Sender<Result<(), AuditError>>;

enum Command {
    Write { line: Vec<u8>, done: Done },
    Reopen { done: Done },
}

struct Writer {
    /// Not an `Option<File>` at rest only when opening failed.
    file: Option<File>,
    path: PathBuf,
    mode: Option<u32>,
    /// A torn line may end the file: start the next batch with a newline.
    torn_tail: bool,
    stats: Arc<Stats>,
}

/// True when the file is not empty and its last byte is not a newline.
fn ends_torn(file: &File) -> bool {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return false;
    }
    let mut last = [0u8; 1];
    // Unreadable (e.g. a device node): assume whole lines.
    matches!(file.read_at(&mut last, len - 1), Ok(1)) && last[0] != b'\n'
}

fn open_file(path: &Path, mode: Option<u32>) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(mode.unwrap_or(0o600))
        .open(path)
        .map_err(|e| AuditError::io("open", &e))?;
    if let Some(mode) = mode {
        // The open mode is filtered by the umask and ignored for an existing
        // file; set it explicitly, as Vault does.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| AuditError::io("chmod", &e))?;
    }
    Ok(file)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch: Vec<(Vec<u8>, Done)> = Vec::new();
            let mut bytes = 0usize;
            let mut reopen = None;
            match first {
                Command::Write { line, done } => {
                    bytes += line.len();
                    batch.push((line, done));
                    while batch.len() < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(Command::Write { line, done }) => {
                                bytes += line.len();
                                batch.push((line, done));
                            }
                            Ok(Command::Reopen { done }) => {
                                reopen = Some(done);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Command::Reopen { done } => reopen = Some(done),
            }
            if !batch.is_empty() {
                self.commit(batch, bytes);
            }
            if let Some(done) = reopen {
                let _ = done.send(self.reopen());
            }
        }
        // Channel closed and drained: every queued event has been committed.
    }

    fn reopen(&mut self) -> Result<(), AuditError> {
        self.file = None;
        self.ensure_open()
    }

    /// Open the file if it is not open; note whether it ends in a torn line
    /// (e.g. the process was killed mid-write).
    fn ensure_open(&mut self) -> Result<(), AuditError> {
        if self.file.is_none() {
            let file = open_file(&self.path, self.mode)?;
            self.torn_tail = ends_torn(&file);
            self.file = Some(file);
        }
        Ok(())
    }

    fn commit(&mut self, batch: Vec<(Vec<u8>, Done)>, bytes: usize) {
        let label = self.stats.label();
        let started = Instant::now();
        let result = self.ensure_open().and_then(|()| {
            let mut buf = Vec::with_capacity(bytes + 1);
            if self.torn_tail {
                buf.push(b'\n');
            }
            for (line, _) in &batch {
                buf.extend_from_slice(line);
            }
            self.write_and_sync(&buf, &label)
        });
        let n = batch.len() as u64;
        match &result {
            Ok(()) => {
                self.torn_tail = false;
                self.stats.events.fetch_add(n, Ordering::Relaxed);
                metrics::device_histogram(
                    metrics::FSYNC_SECONDS,
                    &label,
                    started.elapsed().as_secs_f64(),
                );
                metrics::device_histogram(metrics::GROUP_COMMIT_EVENTS, &label, n as f64);
            }
            Err(e) => {
                tracing::error!(
                    device = %label,
                    events = n,
                    error = %e,
                    "audit file write failed"
                );
            }
        }
        for (_, done) in batch {
            // A caller that gave up no longer listens; nothing to do.
            let _ = done.send(result.clone());
        }
    }

    fn write_and_sync(&mut self, buf: &[u8], label: &str) -> Result<(), AuditError> {
        let Some(file) = self.file.as_mut() else {
            return Err(AuditError::Closed);
        };
        let start_len = file.metadata().map(|m| m.len()).ok();
        let result = file
            .write_all(buf)
            .map_err(|e| AuditError::io("write", &e))
            .and_then(|()| {
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                metrics::device_counter(metrics::FSYNC, label, 1);
                file.sync_data().map_err(|e| AuditError::io("fsync", &e))
            });
        if result.is_err() {
            // Cut off what this batch may have written, so no torn line is
            // left for the next batch to run into.
            let cut = start_len
                .is_some_and(|len| file.set_len(len).and_then(|()| file.sync_data()).is_ok());
            if !cut {
                self.torn_tail = true;
            }
        }
        result
    }
}

/// The `file` audit device. See the module documentation.
pub struct FileDevice {
    mount_path: String,
    description: String,
    shown_options: BTreeMap<String, String>,
    file_path: PathBuf,
    salt: Salt,
    options: FileOptions,
    tx: RwLock<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<(JoinHandle<()>, oneshot::Receiver<()>)>>,
    stats: Arc<Stats>,
}

impl FileDevice {
    /// Open (creating it and its parent directories if needed) the audit log
    /// at `path` — or `path/audit.log` when `path` is an existing directory
    /// or ends with `/` — and start
    /// the writer thread. The device is mounted at `file/` until renamed with
    /// [`FileDevice::named`].
    pub fn open(path: PathBuf, salt: Salt, options: FileOptions) -> Result<FileDevice, AuditError> {
        let names_dir = path.as_os_str().as_encoded_bytes().ends_with(b"/");
        let file_path = if names_dir || path.is_dir() {
            path.join(DEFAULT_FILE_NAME)
        } else {
            path
        };
        if let Some(parent) = file_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| AuditError::io("create directory", &e))?;
        }
        let file = open_file(&file_path, options.mode)?;
        let torn_tail = ends_torn(&file);
        let mount_path = "file/".to_owned();
        let stats = Arc::new(Stats {
            label: RwLock::new(mount_path.clone()),
            ..Stats::default()
        });
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (exit_tx, exit_rx) = oneshot::channel::<()>();
        let writer = Writer {
            file: Some(file),
            path: file_path.clone(),
            mode: options.mode,
            torn_tail,
            stats: stats.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("custos-audit-file".into())
            .spawn(move || {
                writer.run(rx);
                drop(exit_tx);
            })
            .map_err(|e| AuditError::io("start writer", &e))?;
        let mut shown_options = BTreeMap::new();
        shown_options.insert("file_path".to_owned(), file_path.display().to_string());
        Ok(FileDevice {
            mount_path,
            description: String::new(),
            shown_options,
            file_path,
            salt,
            options,
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some((handle, exit_rx))),
            stats,
        })
    }

    /// Build a device from `sys/audit` / server-config options
    /// (`file_path`, `mode`, `format`, `prefix`, `log_raw`, `hmac_accessor`,
    /// `elide_list_responses`), mounted at `mount_path`.
    pub fn from_options(
        mount_path: &str,
        description: &str,
        options: &BTreeMap<String, String>,
        salt: Salt,
    ) -> Result<FileDevice, AuditError> {
        let (path, parsed) = FileOptions::from_map(options)?;
        let mut dev = FileDevice::open(path, salt, parsed)?.named(mount_path, description);
        dev.shown_options = options.clone();
        Ok(dev)
    }

    /// Set the mount path (also the `path` label of its metrics) and the
    /// description shown by `sys/audit`.
    pub fn named(mut self, mount_path: &str, description: &str) -> Self {
        self.mount_path = mount_path.to_owned();
        match self.stats.label.write() {
            Ok(mut l) => *l = mount_path.to_owned(),
            Err(poisoned) => *poisoned.into_inner() = mount_path.to_owned(),
        }
        self.description = description.to_owned();
        self
    }

    /// Where events are written.
    pub fn file_path(&self) -> &Path {
        &self.file_path
    }

    /// fsync calls made so far (one per group-commit batch).
    pub fn fsync_count(&self) -> u64 {
        self.stats.fsyncs.load(Ordering::Relaxed)
    }

    /// Events written and synced so far.
    pub fn events_written(&self) -> u64 {
        self.stats.events.load(Ordering::Relaxed)
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>, AuditError> {
        let guard = match self.tx.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.clone().ok_or(AuditError::Closed)
    }

    async fn request(&self, cmd: impl FnOnce(Done) -> Command) -> Result<(), AuditError> {
        let tx = self.sender()?;
        let (done, wait) = oneshot::channel();
        tx.send(cmd(done)).await.map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }

    /// Hash a copy of `event` and encode it as one line.
    fn encode(&self, event: &AuditEvent) -> Result<Vec<u8>, AuditError> {
        let mut ev = event.clone();
        if self.options.elide_list_responses {
            elide_list_response(&mut ev);
        }
        hash_event(&mut ev, &self.salt, self.options.hash_options());
        let mut line = Vec::with_capacity(1024);
        line.extend_from_slice(self.options.prefix.as_bytes());
        serde_json::to_writer(&mut line, &ev).map_err(|e| AuditError::Encode(e.to_string()))?;
        line.push(b'\n');
        Ok(line)
    }
}

#[async_trait]
impl AuditDevice for FileDevice {
    fn path(&self) -> &str {
        &self.mount_path
    }

    fn kind(&self) -> &str {
        "file"
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn options(&self) -> BTreeMap<String, String> {
        self.shown_options.clone()
    }

    async fn log(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let line = self.encode(event)?;
        self.request(|done| Command::Write { line, done }).await
    }

    fn hash(&self, input: &str) -> String {
        hmac_sha256(&self.salt, input)
    }

    async fn reopen(&self) -> Result<(), AuditError> {
        self.request(|done| Command::Reopen { done }).await
    }

    async fn shutdown(&self) {
        // Closing the channel lets the writer commit what is queued and exit.
        match self.tx.write() {
            Ok(mut g) => drop(g.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
        let writer = match self.writer.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some((handle, exited)) = writer {
            // Resolves (with Err) when the writer thread drops its end on exit.
            let _ = exited.await;
            if handle.join().is_err() {
                tracing::error!(device = %self.mount_path, "audit file writer panicked");
            }
        }
    }
}
