//! The drill's own node: a fresh, listener-less Custos core in a temporary
//! directory, never the production cluster.
//!
//! [`DrillNode::open`] creates `custos-drill-XXXX` under the work directory
//! (Raft in `raft/`; no audit device — the node and everything it would
//! log are deleted when the drill ends, and it never writes to a production
//! device),
//! initializes it 1-of-1 and unseals it with that throwaway share (a restore
//! needs an unsealed node). [`DrillNode::restore`] streams the downloaded
//! archive into `restore_archive(force = true)`, the in-process form of
//! `sys/storage/raft/snapshot-force`, which leaves the node sealed under
//! the source cluster's keyring; [`DrillNode::unseal`] then gives it the
//! source's [`KeyShares`]. [`DrillNode::shutdown`] closes the core and
//! deletes the directory.
//!
//! The key shares file is one hex or base64 share per line (`#` comments
//! allowed), or the JSON `operator init -format=json` prints
//! (`unseal_keys_b64`, else `unseal_keys_hex`). Shares are zeroized on drop
//! and never printed: errors name the file and the line only.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use custos_core::config::ServerConfig;
use custos_core::core::Core;
use custos_core::error::CoreError;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

const READ_CHUNK: usize = 256 << 10;
/// How long a fresh node may take to elect itself.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The source cluster's unseal key shares.
pub struct KeyShares(Vec<Zeroizing<Vec<u8>>>);

impl std::fmt::Debug for KeyShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyShares(<{} redacted>)", self.0.len())
    }
}

/// Vault's order: hex first, then standard base64.
fn decode_share(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    let s = s.trim();
    if let Ok(b) = hex::decode(s) {
        return Some(Zeroizing::new(b));
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .map(Zeroizing::new)
}

impl KeyShares {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Read a key shares file.
    pub fn load(path: &Path) -> Result<KeyShares, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("key shares file {}: {e}", path.display()))?,
        );
        Self::parse(&text).map_err(|m| format!("key shares file {}: {m}", path.display()))
    }

    /// Parse the text of a key shares file.
    pub fn parse(text: &str) -> Result<KeyShares, String> {
        let trimmed = text.trim_start();
        let mut shares = Vec::new();
        if trimmed.starts_with('{') {
            let doc: serde_json::Value = serde_json::from_str(trimmed)
                .map_err(|e| format!("not valid JSON (line {})", e.line()))?;
            let (field, list) = ["unseal_keys_b64", "unseal_keys_hex", "keys_base64", "keys"]
                .iter()
                .find_map(|f| doc.get(*f).and_then(|v| v.as_array()).map(|a| (*f, a)))
                .ok_or(
                    "JSON without unseal_keys_b64 (the output of `operator init -format=json`)",
                )?;
            for (i, v) in list.iter().enumerate() {
                let share = v
                    .as_str()
                    .and_then(decode_share)
                    .ok_or_else(|| format!("{field}[{i}] is not a hex or base64 string"))?;
                shares.push(share);
            }
        } else {
            for (i, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let share = decode_share(l)
                    .ok_or_else(|| format!("line {}: not a hex or base64 key share", i + 1))?;
                shares.push(share);
            }
        }
        if shares.is_empty() {
            return Err("holds no key share".into());
        }
        Ok(KeyShares(shares))
    }
}

/// A fresh node in its own temporary directory.
pub struct DrillNode {
    pub core: Arc<Core>,
    dir: tempfile::TempDir,
}

fn config_for(dir: &Path) -> ServerConfig {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut cfg = ServerConfig::dev(listen, dir);
    // No listener: the drill talks to its node in-process only.
    cfg.listeners.clear();
    cfg.dev = false;
    cfg.cluster_name = Some("custos-drill".into());
    // No audit device: the node is thrown away with its directory when the
    // drill ends, so an audit log of its verification reads would be
    // deleted unread, and waiting for its fsyncs was most of the verify
    // phase. The drill's own report is the record of what it read.
    cfg.audit.clear();
    cfg
}

impl DrillNode {
    /// Create, initialize (1 of 1) and unseal a fresh node under
    /// `work_dir` (the system temp directory when `None`).
    pub async fn open(work_dir: Option<&Path>) -> Result<DrillNode, String> {
        let mut b = tempfile::Builder::new();
        b.prefix("custos-drill-");
        let dir = match work_dir {
            Some(w) => {
                std::fs::create_dir_all(w).map_err(|e| format!("work_dir {}: {e}", w.display()))?;
                b.tempdir_in(w)
            }
            None => b.tempdir(),
        }
        .map_err(|e| format!("creating the drill node's directory: {e}"))?;
        let cfg = config_for(dir.path());
        let core = custos_core::server::open_core(&cfg)
            .await
            .map_err(|e| format!("opening the drill node: {e}"))?;
        let node = DrillNode { core, dir };
        let init = async {
            // A one-node Raft elects itself within moments of opening;
            // until then a write answers "no leader".
            let deadline = std::time::Instant::now() + LEADER_WAIT;
            let (keys, _root) = loop {
                match node.core.initialize(1, 1).await {
                    Ok(k) => break k,
                    Err(CoreError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(format!("initializing the drill node: {e}")),
                }
            };
            let key = keys.into_iter().next().ok_or("init returned no key")?;
            node.core
                .submit_unseal_share(&key)
                .await
                .map_err(|e| format!("unsealing the fresh drill node: {e}"))?;
            Ok::<_, String>(())
        };
        if let Err(e) = init.await {
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Restore the archive in `file` (snapshot-force). Returns whether the
    /// node is unsealed afterwards (false for another cluster's snapshot).
    pub async fn restore(&self, file: &Path) -> Result<bool, String> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("opening {}: {e}", file.display()))?;
        let stream = futures::stream::unfold(Some(f), |f| async move {
            let mut f = f?;
            let mut buf = vec![0u8; READ_CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed();
        custos_core::raft_snapshot::restore_archive(&self.core, stream, true)
            .await
            .map_err(|e| e.to_string())
    }

    /// Unseal with the source cluster's shares. Returns how many were used.
    pub async fn unseal(&self, shares: &KeyShares) -> Result<usize, String> {
        if !self.core.is_sealed() {
            return Ok(0);
        }
        for (i, share) in shares.0.iter().enumerate() {
            match self.core.submit_unseal_share(share).await {
                Ok(true) => return Ok(i + 1),
                Ok(false) => {}
                Err(e) => {
                    return Err(format!(
                        "the source cluster's key shares do not unseal the restored node (after share {} of {}): {e}",
                        i + 1,
                        shares.len()
                    ));
                }
            }
        }
        let need = match self.core.seal_config().await {
            Ok(Some(c)) => format!(", it needs {}", c.secret_threshold),
            _ => String::new(),
        };
        Err(format!(
            "the restored node is still sealed after all {} key share(s) of the file{need}",
            shares.len()
        ))
    }

    /// Close the core and delete the directory.
    pub async fn shutdown(self) {
        self.core.shutdown().await;
        drop(self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_files() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 33]);
        let hex = hex::encode([9u8; 33]);
        let lines = KeyShares::parse(&format!("# source cluster\n{b64}\n\n{hex}\n")).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(&lines.0[0][..], &[7u8; 33]);
        assert_eq!(&lines.0[1][..], &[9u8; 33]);
        let json = KeyShares::parse(&format!(
            r#"{{"unseal_keys_b64":["{b64}"],"unseal_keys_hex":["{hex}"],"root_token":"x"}}"#
        ))
        .unwrap();
        assert_eq!(&json.0[0][..], &[7u8; 33]);
        let e = KeyShares::parse("not*a*key\n").unwrap_err();
        assert_eq!(e, "line 1: not a hex or base64 key share");
        assert!(KeyShares::parse("\n# nothing\n").is_err());
        assert_eq!(format!("{json:?}"), "KeyShares(<1 redacted>)");
    }
}
