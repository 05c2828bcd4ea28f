//! What a drill checks on the node it restored, once it is unsealed with
//! the source cluster's keys.
//!
//! In order, each one [`Check`] of the report:
//!
//! 1. `state_digest`: core recomputes the per-mount digest of everything
//!    the node now holds ([`state_digest::current`], every value decrypted
//!    with the restored keyring) and it must equal the manifest's, mount by
//!    mount; the first differing mount is named. This runs before the drill
//!    writes anything (its root token).
//! 2. `kv <mount>` for every KV mount of the manifest, through the request
//!    pipeline ([`Core::handle`]) with a root token minted on the drill node:
//!    every key is listed; KV v2 reads every version of each key not
//!    destroyed (the latest first: when it is version 1 that is all there
//!    is, otherwise the metadata lists the rest; a deleted version must
//!    answer 404 with its deletion time: present but deleted), KV v1 reads
//!    each key; the secrets and versions read must equal the manifest's
//!    counts.
//! 3. `transit_canaries`: every canary of the manifest decrypts under its
//!    key ([`check_canary`]).
//! 4. `policies`: every ACL policy lists and reads; their number equals the
//!    manifest's.
//! 5. `token_store`: the restored token entries number what the manifest
//!    says, less those the node's own expiry sweep removed when it unsealed
//!    (tokens that expired since the snapshot: [`tokens_swept`], read from
//!    core's `custos_token_revoked_total`), and every accessor resolves (an
//!    expired token answers 4xx and is counted as expired; a 5xx means an
//!    entry does not load).
//!
//! A mount's keys are walked with paginated LISTs (`after`, `limit`),
//! [`KEYS_PER_PAGE`] at a time, and each page is read back before the next
//! is listed, so memory holds a page of keys, not the mount's key space.
//! Reads run `READ_CONCURRENCY` at a time, spread over `READ_TASKS` tasks so
//! every core of the runtime takes part, through the drill node's request
//! pipeline (the node has no audit device: it and its data are deleted when
//! the drill ends). Nothing here puts a secret value in a message: paths,
//! versions and counts only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use custos_core::core::Core;
use custos_core::engines::transit::canary::check_canary;
use custos_core::error::CoreError;
use custos_core::logical::{Operation, Request, Response, Secret};
use custos_core::state_digest::{self, MountDigest, StateDigest};
use futures::StreamExt;
use serde_json::{Map, Value};

use super::report::Check;
use crate::manifest::Manifest;

/// Requests in flight at once while reading secrets back (with an audit
/// device on the drill node, 100k secrets took 19 s at 256 and 36 s at 64;
/// without one the reads are CPU-bound and both cores stay busy).
pub const READ_CONCURRENCY: usize = 256;

/// Tasks the reads of one mount are spread over (the runtime's workers
/// take them in parallel).
const READ_TASKS: usize = 4;

/// Keys listed, then read back, at a time. Listing a whole mount at once
/// held every key three times over (the engine's listing, the response's
/// JSON array, the copy): at 1M secrets a drill's resident set grew by
/// ~150 MiB during the verify phase.
const KEYS_PER_PAGE: usize = 16_384;

/// A page size that means "no pages": one LIST per folder, without `after`
/// or `limit`.
const ALL: usize = usize::MAX;

/// What the verify phase found.
#[derive(Debug, Default)]
pub struct Verified {
    pub checks: Vec<Check>,
    pub secrets: u64,
    pub versions: u64,
}

struct Client<'a> {
    core: &'a Core,
    token: String,
}

impl Client<'_> {
    async fn call(
        &self,
        op: Operation,
        path: &str,
        data: Map<String, Value>,
    ) -> Result<Response, CoreError> {
        let mut req = Request::new(op, path);
        req.client_token = Some(Secret::new(self.token.clone()));
        req.data = data;
        self.core.handle(req).await
    }

    /// One page of the one-level listing of `path`: the items after
    /// `after`, at most `limit` ([`ALL`]: every item, unpaged); none for a
    /// 404.
    async fn list_page(
        &self,
        path: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, String> {
        let mut data = Map::new();
        if limit != ALL {
            data.insert("after".into(), Value::from(after));
            data.insert("limit".into(), Value::from(limit));
        }
        match self.call(Operation::List, path, data).await {
            // Kept to the page asked for even from an endpoint that ignores
            // `after` and `limit` (as KV v1 does, like OpenBao's).
            Ok(r) => Ok(r
                .data
                .as_ref()
                .and_then(|d| d.get("keys"))
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .filter(|k| *k > after)
                        .take(limit)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()),
            Err(e) if e.status() == 404 => Ok(Vec::new()),
            Err(e) => Err(format!("LIST {path}: {e}")),
        }
    }

    /// Every key under `base` (which ends in `/`), relative to it, sorted:
    /// one unpaged LIST per folder.
    async fn list_all(&self, base: &str) -> Result<Vec<String>, String> {
        let mut keys = KeyWalk::new(base.to_string()).next_page(self, ALL).await?;
        keys.sort();
        Ok(keys)
    }
}

/// Every key under a base path (which ends in `/`), a page at a time: a
/// stack of folders still to list, each with the last item listed from it.
struct KeyWalk {
    base: String,
    /// (folder relative to `base`, the last item listed from it).
    folders: Vec<(String, String)>,
}

impl KeyWalk {
    fn new(base: String) -> KeyWalk {
        KeyWalk {
            base,
            folders: vec![(String::new(), String::new())],
        }
    }

    /// Up to `want` more keys ([`ALL`]: every one, listing each folder
    /// unpaged), relative to the base; none once every key was returned. A
    /// folder met is listed (depth first) before the rest of the folder it
    /// is in.
    async fn next_page(&mut self, client: &Client<'_>, want: usize) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        while keys.len() < want {
            let Some((folder, after)) = self.folders.last_mut() else {
                break;
            };
            let limit = if want == ALL { ALL } else { want - keys.len() };
            let path = format!("{}{folder}", self.base);
            let items = client.list_page(&path, after, limit).await?;
            let folder = folder.clone();
            match items.last() {
                Some(last) if items.len() == limit => *after = last.clone(),
                // A short page is the folder's last.
                _ => {
                    self.folders.pop();
                }
            }
            for item in items {
                let path = format!("{folder}{item}");
                if item.ends_with('/') {
                    self.folders.push((path, String::new()));
                } else {
                    keys.push(path);
                }
            }
        }
        Ok(keys)
    }
}

fn field<'r>(r: &'r Response, name: &str) -> Option<&'r Value> {
    r.data.as_ref().and_then(|d| d.get(name))
}

/// Tokens revoked so far in this process by any token store, whatever the
/// reason (`custos_token_revoked_total`, summed over its labels). A drill
/// takes it before unsealing the restored node and again right after the
/// digest: the difference bounds what the node's expiry sweep removed.
pub fn tokens_swept() -> u64 {
    let text = custos_core::metrics::install().render();
    let prefix = custos_core::metrics::TOKEN_REVOKED;
    text.lines()
        .filter(|l| {
            l.strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Run every check on the unsealed `core` against `manifest`.
/// `swept_before` is [`tokens_swept`] taken before the node was unsealed.
pub async fn verify(core: &Arc<Core>, manifest: &Manifest, swept_before: u64) -> Verified {
    let mut v = Verified::default();
    let digest = state_digest::current(core).await;
    let swept = tokens_swept().saturating_sub(swept_before);
    let restored = match digest {
        Ok(d) => d,
        Err(e) => {
            v.checks.push(Check::fail(
                "state_digest",
                format!("computing the restored node's digest: {e}"),
            ));
            return v;
        }
    };
    v.checks.push(digest_check(&manifest.state, &restored));

    let token = match core.unsealed() {
        Ok(u) => match u.tokens.create_root_token(None).await {
            Ok((t, entry)) => (t, entry.accessor),
            Err(e) => {
                v.checks.push(Check::fail(
                    "token_store",
                    format!("minting a root token on the drill node: {e}"),
                ));
                return v;
            }
        },
        Err(e) => {
            v.checks
                .push(Check::fail("unseal", format!("node is not unsealed: {e}")));
            return v;
        }
    };
    let client = Client {
        core: core.as_ref(),
        token: token.0,
    };
    for m in manifest
        .state
        .mounts
        .iter()
        .filter(|m| m.mount_type == "kv")
    {
        let (check, secrets, versions) = kv_check(core, &client.token, m).await;
        v.secrets += secrets;
        v.versions += versions;
        v.checks.push(check);
    }
    v.checks.push(canary_check(core, manifest).await);
    v.checks.push(policy_check(&client, &manifest.state).await);
    v.checks
        .push(token_check(&client, &manifest.state, &restored, swept, &token.1).await);
    v
}

fn digest_check(want: &StateDigest, got: &StateDigest) -> Check {
    let diffs = want.differences(got);
    match diffs.first() {
        None => Check::pass(
            "state_digest",
            format!(
                "{} mounts match the manifest's digests ({} storage entries)",
                want.mounts.len(),
                got.pairs
            ),
        ),
        Some(first) => Check::fail(
            "state_digest",
            if diffs.len() > 1 {
                format!("{first} (and {} more differences)", diffs.len() - 1)
            } else {
                first.clone()
            },
        ),
    }
}

/// One key's read-back: (versions present, of which deleted), or what failed.
///
/// The latest version is read first: when it is version 1 it is the key's
/// only version, and that one read is the whole check (most keys of a
/// store have one version, so this halves the reads). Otherwise the
/// metadata lists the versions and each one not destroyed is read.
async fn read_kv2(client: &Client<'_>, mount: &str, key: &str) -> Result<(u64, u64), String> {
    let data_path = format!("{mount}data/{key}");
    if let Ok(latest) = client.call(Operation::Read, &data_path, Map::new()).await {
        let meta = field(&latest, "metadata");
        if meta.and_then(|m| m.get("version")).and_then(Value::as_u64) == Some(1) {
            if meta
                .and_then(|m| m.get("destroyed"))
                .and_then(Value::as_bool)
                == Some(true)
            {
                return Ok((0, 0));
            }
            return version_read(&latest, &data_path, 1).map(|deleted| (1, u64::from(deleted)));
        }
    }
    let meta_path = format!("{mount}metadata/{key}");
    let meta = client
        .call(Operation::Read, &meta_path, Map::new())
        .await
        .map_err(|e| format!("reading {meta_path}: {e}"))?;
    let versions = field(&meta, "versions")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{meta_path}: metadata without versions"))?;
    let (mut present, mut deleted) = (0u64, 0u64);
    for (ver, vm) in versions {
        if vm.get("destroyed").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let n: u64 = ver
            .parse()
            .map_err(|_| format!("{meta_path}: version {ver:?} is not a number"))?;
        let mut q = Map::new();
        q.insert("version".into(), Value::from(n));
        let r = client
            .call(Operation::Read, &data_path, q)
            .await
            .map_err(|e| format!("reading {data_path} version {n}: {e}"))?;
        if version_read(&r, &data_path, n)? {
            deleted += 1;
        }
        present += 1;
    }
    Ok((present, deleted))
}

/// Check the read of version `n` of a KV v2 key: its data, or a 404 that
/// says when it was deleted (present but deleted: `true`).
fn version_read(r: &Response, data_path: &str, n: u64) -> Result<bool, String> {
    let deletion = field(r, "metadata")
        .and_then(|m| m.get("deletion_time"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match (r.status, field(r, "data")) {
        (Some(404), _) if !deletion.is_empty() => Ok(true),
        (None | Some(200), Some(Value::Object(_))) => Ok(false),
        (status, _) => Err(format!(
            "{data_path} version {n}: no data (status {})",
            status.unwrap_or(200)
        )),
    }
}

async fn read_kv1(client: &Client<'_>, mount: &str, key: &str) -> Result<(), String> {
    let path = format!("{mount}{key}");
    let r = client
        .call(Operation::Read, &path, Map::new())
        .await
        .map_err(|e| format!("reading {path}: {e}"))?;
    match r.data {
        Some(_) => Ok(()),
        None => Err(format!("{path}: no data")),
    }
}

/// What the read-back tasks of one mount counted.
#[derive(Default)]
struct Counts {
    secrets: AtomicU64,
    versions: AtomicU64,
    deleted: AtomicU64,
}

/// Read back one key of a KV mount (every version of a v2 key) and count it.
async fn read_back(
    client: &Client<'_>,
    counts: &Counts,
    mount: &str,
    key: &str,
    v2: bool,
) -> Result<(), String> {
    if v2 {
        let (p, d) = read_kv2(client, mount, key).await?;
        counts.versions.fetch_add(p, Ordering::Relaxed);
        counts.deleted.fetch_add(d, Ordering::Relaxed);
    } else {
        read_kv1(client, mount, key).await?;
        counts.versions.fetch_add(1, Ordering::Relaxed);
    }
    counts.secrets.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Read back one page of keys of a KV mount, counting into `counts`.
/// Returns the first error.
async fn read_page(
    core: &Arc<Core>,
    token: &str,
    mount: &str,
    v2: bool,
    keys: Arc<Vec<String>>,
    counts: &Arc<Counts>,
) -> Option<String> {
    // The reads run in READ_TASKS tasks, each over every READ_TASKS-th key
    // (so each walks the keys in order), because the futures of one
    // `buffer_unordered` all run in its one task: on one core at a time.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..READ_TASKS {
        let (core, token, keys, counts) = (
            core.clone(),
            token.to_string(),
            keys.clone(),
            counts.clone(),
        );
        let mount = mount.to_string();
        tasks.spawn(async move {
            let client = Client {
                core: core.as_ref(),
                token,
            };
            let mut todo = keys.iter().skip(t).step_by(READ_TASKS);
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut first_error = None;
            loop {
                while in_flight.len() < READ_CONCURRENCY / READ_TASKS {
                    match todo.next() {
                        Some(key) => in_flight.push(read_back(&client, &counts, &mount, key, v2)),
                        None => break,
                    }
                }
                match in_flight.next().await {
                    Some(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    Some(Ok(())) => {}
                    None => break,
                }
            }
            first_error
        });
    }
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(None) => {}
            Ok(Some(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("a read-back task failed: {e}"));
            }
        }
    }
    first_error
}

/// Read back every secret of one KV mount. Returns the check and the
/// secrets and versions read.
async fn kv_check(core: &Arc<Core>, token: &str, m: &MountDigest) -> (Check, u64, u64) {
    let name = format!("kv {}", m.path);
    let v2 = m.kv_version == 2;
    let base = if v2 {
        format!("{}metadata/", m.path)
    } else {
        m.path.clone()
    };
    let client = Client {
        core: core.as_ref(),
        token: token.to_string(),
    };
    let counts = Arc::new(Counts::default());
    let mut walk = KeyWalk::new(base);
    // KV v1 lists have no pages (in OpenBao neither): one page holds all.
    let per_page = if v2 { KEYS_PER_PAGE } else { ALL };
    let mut first_error = None;
    while first_error.is_none() {
        let keys = match walk.next_page(&client, per_page).await {
            Ok(k) if k.is_empty() => break,
            Ok(k) => Arc::new(k),
            Err(e) => return (Check::fail(&name, e), 0, 0),
        };
        first_error = read_page(core, token, &m.path, v2, keys, &counts).await;
    }
    let (secrets, versions, deleted) = (
        counts.secrets.load(Ordering::Relaxed),
        counts.versions.load(Ordering::Relaxed),
        counts.deleted.load(Ordering::Relaxed),
    );
    let check = if let Some(e) = first_error {
        Check::fail(&name, e)
    } else if secrets != m.secrets {
        Check::fail(
            &name,
            format!(
                "{secrets} secrets read back, the manifest says {}",
                m.secrets
            ),
        )
    } else if v2 && versions != m.versions {
        Check::fail(
            &name,
            format!(
                "{versions} versions read back, the manifest says {}",
                m.versions
            ),
        )
    } else if v2 {
        Check::pass(
            &name,
            format!(
                "{secrets} secrets, {versions} versions read (of which {deleted} deleted, present as deleted)"
            ),
        )
    } else {
        Check::pass(&name, format!("{secrets} secrets read (kv v1)"))
    };
    (check, secrets, versions)
}

async fn canary_check(core: &Core, manifest: &Manifest) -> Check {
    let mut decrypted = 0usize;
    let mut without = 0usize;
    for c in &manifest.transit_canaries {
        if let Err(e) = check_canary(core, c).await {
            return Check::fail("transit_canaries", e);
        }
        if c.ciphertext.is_empty() {
            without += 1;
        } else {
            decrypted += 1;
        }
    }
    let mut detail = format!("{decrypted} transit canaries decrypt under their keys");
    if without > 0 {
        detail.push_str(&format!(
            "; {without} key(s) present without a canary (derived or not for encryption)"
        ));
    }
    Check::pass("transit_canaries", detail)
}

async fn policy_check(client: &Client<'_>, want: &StateDigest) -> Check {
    let names = match client.list_all("sys/policies/acl/").await {
        Ok(n) => n,
        Err(e) => return Check::fail("policies", e),
    };
    // `root` is built in, never stored.
    let stored: Vec<&String> = names.iter().filter(|n| n.as_str() != "root").collect();
    for n in &stored {
        let path = format!("sys/policies/acl/{n}");
        match client.call(Operation::Read, &path, Map::new()).await {
            Ok(r) if field(&r, "policy").is_some() => {}
            Ok(_) => return Check::fail("policies", format!("{path}: no policy text")),
            Err(e) => return Check::fail("policies", format!("reading {path}: {e}")),
        }
    }
    if stored.len() as u64 != want.policies {
        return Check::fail(
            "policies",
            format!(
                "{} policies restored, the manifest says {}",
                stored.len(),
                want.policies
            ),
        );
    }
    Check::pass(
        "policies",
        format!("{} policies list and read", stored.len()),
    )
}

async fn token_check(
    client: &Client<'_>,
    want: &StateDigest,
    restored: &StateDigest,
    swept: u64,
    own_accessor: &str,
) -> Check {
    // The sweep may have run before or after the digest was taken.
    let explained = restored.tokens <= want.tokens && restored.tokens + swept >= want.tokens;
    if !explained {
        return Check::fail(
            "token_store",
            format!(
                "{} token entries restored, the manifest says {} ({swept} revoked by the node's expiry sweep since it unsealed)",
                restored.tokens, want.tokens
            ),
        );
    }
    let expired_since = want.tokens - restored.tokens;
    let accessors = match client.list_all("auth/token/accessors/").await {
        Ok(a) => a,
        Err(e) => return Check::fail("token_store", e),
    };
    let loaded = AtomicU64::new(0);
    let expired = AtomicU64::new(0);
    let mut results = futures::stream::iter(accessors.iter().filter(|a| *a != own_accessor))
        .map(|a| async {
            let mut d = Map::new();
            d.insert("accessor".into(), Value::from(a.as_str()));
            match client
                .call(Operation::Update, "auth/token/lookup-accessor", d)
                .await
            {
                Ok(_) => {
                    loaded.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) if e.status() < 500 => {
                    expired.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => Err(format!("a token entry does not load: {e}")),
            }
        })
        .buffer_unordered(READ_CONCURRENCY);
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            return Check::fail("token_store", e);
        }
    }
    drop(results);
    Check::pass(
        "token_store",
        format!(
            "{} token entries restored of the manifest's {}{}; {} load, {} answer as expired",
            restored.tokens,
            want.tokens,
            if expired_since > 0 {
                format!(" ({expired_since} expired since the snapshot and were swept at unseal)")
            } else {
                String::new()
            },
            loaded.into_inner(),
            expired.into_inner()
        ),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::drill::node::DrillNode;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    /// A walk in pages of any size returns every key of a KV v2 mount once
    /// (folders, nested folders, names around `/`), no page larger than
    /// asked: what listing the whole mount at once returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_walk_returns_every_key_once_in_pages() {
        let node = DrillNode::open(None).await.expect("drill node");
        let unsealed = node.core.unsealed().expect("unsealed");
        let (token, _) = unsealed
            .tokens
            .create_root_token(None)
            .await
            .expect("root token");
        let client = Client {
            core: node.core.as_ref(),
            token,
        };
        client
            .call(
                Operation::Update,
                "sys/mounts/secret",
                map(json!({"type": "kv", "options": {"version": "2"}})),
            )
            .await
            .expect("mount");
        let names = [
            "a", "b", "c/d", "c/e", "c0", "c-x", "d/e/f", "d/e/g", "d/h", "e", "f/g/h/i",
        ];
        for name in names {
            client
                .call(
                    Operation::Update,
                    &format!("secret/data/{name}"),
                    map(json!({"data": {"v": name}})),
                )
                .await
                .expect("write");
        }
        let all = client.list_all("secret/metadata/").await.expect("list");
        let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        want.sort();
        assert_eq!(all, want);
        for size in [1, 2, 3, 100] {
            let mut walk = KeyWalk::new("secret/metadata/".into());
            let mut got = Vec::new();
            loop {
                let page = walk.next_page(&client, size).await.expect("page");
                assert!(page.len() <= size, "a page of {} for {size}", page.len());
                if page.is_empty() {
                    break;
                }
                got.extend(page);
            }
            got.sort();
            assert_eq!(got, want, "pages of {size}");
        }
        node.shutdown().await;
    }
}
