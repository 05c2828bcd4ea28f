//! The file audit device as a user meets it: the path the dev banner prints
//! (`<data dir>/audit/audit.log`) followed with `tail -F` by name while the
//! log rolls under `custos audit rotate`, a Vault-style `file_path` naming a
//! file, and `sys/health` when the audit log cannot record.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    BIN, Server, call, dev_server, read_audit_events, start_with_config, start_with_config_env,
    unseal,
};

/// `tail -F -n +1 PATH`, its stdout and stderr collected line by line.
struct Tail {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<String>>,
}

impl Tail {
    /// `None` when there is no `tail` to run.
    fn follow(path: &Path) -> Option<Tail> {
        let mut child = Command::new("tail")
            .args(["-F", "-n", "+1"])
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take()?, child.stderr.take()?);
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().expect("lines").push(line);
            }
        });
        let e = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut e = e.lock().expect("errors");
                e.push_str(&line);
                e.push('\n');
            }
        });
        Some(Tail {
            child,
            lines,
            errors,
        })
    }

    /// The sequence numbers of the audit records seen so far, in order.
    fn seqs(&self) -> Vec<u64> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["custos_seq"].as_u64())
            .collect()
    }

    fn text(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the CLI against `s` as root.
fn custos(s: &Server, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("VAULT_ADDR", format!("http://{}", s.addr))
        .env("VAULT_TOKEN", &s.root_token)
        .env_remove("CUSTOS_ADDR")
        .env_remove("CUSTOS_TOKEN")
        .output()
        .expect("run custos")
}

fn kv_put(s: &Server, path: &str) {
    let o = custos(s, &["kv", "put", path, "n=1"]);
    assert!(
        o.status.success(),
        "kv put {path}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        s.output()
    );
}

/// Wait until `done` holds, or fail with `what` and the tail's output.
fn wait_for(tail: &Tail, what: &str, done: impl Fn(&Tail) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(tail) {
        assert!(
            Instant::now() < deadline,
            "tail -F never showed {what}:\nstdout:\n{}\nstderr:\n{}",
            tail.text(),
            tail.errors.lock().expect("errors")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tail_follows_the_dev_audit_log_by_name_across_rotations() {
    let s = dev_server();
    // The README's path, as the banner prints it.
    let live = s.dir.join("audit").join("audit.log");
    let banner = s.output();
    assert!(
        banner.contains(&format!("Audit: file at {}", live.display())),
        "{banner}"
    );
    let Some(tail) = Tail::follow(&live) else {
        eprintln!("skipping: no `tail` to run");
        return;
    };
    kv_put(&s, "secret/tail-0");
    wait_for(&tail, "the first write", |t| {
        t.text().contains("secret/data/tail-0")
    });

    // Writes, each rotation between them, some back to back.
    let mut n = 1;
    for round in 0..4 {
        for _ in 0..3 {
            kv_put(&s, &format!("secret/tail-{n}"));
            n += 1;
        }
        let o = custos(&s, &["audit", "rotate"]);
        assert!(
            o.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    kv_put(&s, &format!("secret/tail-{n}"));
    let last = format!("\"secret/data/tail-{n}\"");
    wait_for(&tail, "the last write", |t| {
        t.text().matches(last.as_str()).count() >= 2
    });

    // Every record in the segments from the first one tail showed is in
    // tail's output, once, in order: nothing skipped at a roll.
    let seen = tail.seqs();
    let on_disk: Vec<u64> = read_audit_events(&s.dir.join("audit"))
        .iter()
        .filter_map(|v| v["custos_seq"].as_u64())
        .filter(|q| *q >= seen[0])
        .collect();
    assert_eq!(seen, on_disk, "tail -F output:\n{}", tail.text());
    let segments: BTreeSet<String> = std::fs::read_dir(s.dir.join("audit"))
        .expect("audit dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("audit-") && n.ends_with(".log"))
        .collect();
    assert!(segments.len() >= 5, "{segments:?}");
    assert!(
        tail.errors
            .lock()
            .expect("errors")
            .contains("following new file"),
        "tail never switched segments"
    );
}

/// Requests refused for their token (none, unknown) are audited as OpenBao
/// audits them: a request event and a response event, both with the error,
/// no `auth` block, the presented token HMAC'd — so probing with stolen or
/// guessed tokens shows in the log. OpenBao 2.7.2 writes the same two
/// events for these two calls (checked against `bao server -dev` with a
/// file device).
#[tokio::test]
async fn requests_refused_for_their_token_are_audited() {
    let s = dev_server();
    let guessed = "hvs.guessed-token-7f3a";
    for token in [None, Some(guessed)] {
        let (status, body) = call(&s, "GET", "secret/data/probe", token, Value::Null).await;
        assert_eq!(status, 403);
        assert_eq!(body, json!({"errors": ["permission denied"]}));
    }

    let events = events_for(&s.dir.join("audit"), "secret/data/probe");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["request", "response", "request", "response"],
        "{events:#?}"
    );
    for e in &events {
        assert_eq!(e["error"], "permission denied", "{e:#}");
        assert_eq!(e["request"]["operation"], "read", "{e:#}");
        assert_eq!(e["request"]["mount_point"], "secret/", "{e:#}");
        assert_eq!(e["request"]["mount_type"], "kv", "{e:#}");
        assert!(
            e["auth"]["accessor"].as_str().unwrap_or("").is_empty(),
            "{e:#}"
        );
        assert!(
            e["auth"]["policies"]
                .as_array()
                .is_none_or(|p| p.is_empty()),
            "{e:#}"
        );
    }
    // The first call had no token; the second's is in the log HMAC'd only.
    assert!(
        events[0]["request"]["client_token"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    let hashed = events[2]["request"]["client_token"].as_str().unwrap_or("");
    assert!(hashed.starts_with("hmac-sha256:"), "{:#}", events[2]);
    let log = std::fs::read_dir(s.dir.join("audit"))
        .expect("audit dir")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect::<String>();
    assert!(
        !log.contains(guessed),
        "the presented token is in the audit log in the clear"
    );
}

/// A request whose token lookup fails (an internal error, injected in test
/// builds with `CUSTOS_FAILPOINT=token-lookup-error@<path>`) ends before its
/// request event is written: it is audited all the same, request and
/// response with the error, as Vault audits a failed token check.
#[tokio::test]
async fn a_request_failing_before_its_audit_is_audited_with_its_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let audit_dir = tmp.path().join("audit");
    let cfg = config_with_audit_file(tmp.path(), &audit_dir, "");
    let failpoint = [("CUSTOS_FAILPOINT", "token-lookup-error@sys/mounts")];
    let mut s = start_with_config_env(tmp.path(), &cfg, &failpoint);
    init_unseal(&mut s).await;

    let token = Some(s.root_token.as_str());
    let (status, _) = call(&s, "GET", "sys/mounts", token, Value::Null).await;
    assert_eq!(status, 500);
    let events = events_for(&audit_dir, "sys/mounts");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["request", "response"], "{events:#?}");
    for e in &events {
        let error = e["error"].as_str().unwrap_or("");
        assert!(error.contains("failpoint: token lookup"), "{e:#}");
        let token = e["request"]["client_token"].as_str().unwrap_or("");
        assert!(token.starts_with("hmac-sha256:"), "{e:#}");
    }
    // Other paths are untouched by the failpoint.
    let (status, _) = call(&s, "GET", "sys/audit", token, Value::Null).await;
    assert_eq!(status, 200);
}

/// The audit events on disk in `dir` for requests to `path`, in log order.
fn events_for(dir: &Path, path: &str) -> Vec<Value> {
    read_audit_events(dir)
        .into_iter()
        .filter(|e| e["request"]["path"] == path)
        .collect()
}

/// A Vault-style config: `file_path` names a file; `extra` more options.
fn config_with_audit_file(dir: &Path, file_path: &Path, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("server.hcl");
    let text = format!(
        r#"
storage "raft" {{
  path    = "{raft}"
  node_id = "node1"
}}
listener "tcp" {{
  address     = "127.0.0.1:0"
  tls_disable = true
}}
audit "file" "file" {{
  options {{
    file_path = "{file}"
    {extra}
  }}
}}
"#,
        raft = dir.join("raft").display(),
        file = file_path.display(),
    );
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

async fn init_unseal(s: &mut Server) {
    let init: Value = s
        .client()
        .put(s.url("sys/init"))
        .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
        .send()
        .await
        .expect("init")
        .json()
        .await
        .expect("init json");
    s.unseal_key = init["keys"][0].as_str().expect("key").to_string();
    s.root_token = init["root_token"].as_str().expect("root").to_string();
    unseal(s).await;
}

async fn health(s: &Server, query: &str) -> (u16, Value) {
    let r = s
        .client()
        .get(format!("{}{query}", s.url("sys/health")))
        .send()
        .await
        .expect("health");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_file_path_naming_a_file_is_the_live_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("log").join("vault_audit.log");
    let cfg = config_with_audit_file(tmp.path(), &file, "");
    let mut s = start_with_config(tmp.path(), &cfg);
    init_unseal(&mut s).await;
    let (st, h) = health(&s, "").await;
    assert_eq!(st, 200, "{h}");
    assert!(h.get("audit_failure").is_none(), "{h}");
    let r = s
        .client()
        .get(s.url("sys/mounts"))
        .header("X-Vault-Token", &s.root_token)
        .send()
        .await
        .expect("mounts");
    assert_eq!(r.status().as_u16(), 200);
    let text = std::fs::read_to_string(&file).expect("the configured file");
    assert!(text.contains("\"sys/mounts\""), "{text}");
    // Sealed segments beside it, named after it.
    let o = custos(&s, &["audit", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: BTreeSet<String> = std::fs::read_dir(file.parent().expect("parent"))
        .expect("log dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(names.contains("vault_audit.log"), "{names:?}");
    assert!(
        names
            .iter()
            .filter(|n| n.starts_with("vault_audit-"))
            .count()
            >= 2,
        "{names:?}"
    );
    let after = std::fs::read_to_string(&file).expect("the configured file");
    assert!(!after.contains("\"sys/mounts\""), "{after}");
    assert!(after.contains("sys/audit-rotate"), "{after}");
}

#[tokio::test]
async fn health_answers_503_while_the_audit_log_cannot_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A disk guard floor no disk meets: every event is refused.
    let cfg = config_with_audit_file(
        tmp.path(),
        &tmp.path().join("audit"),
        r#"min_free_bytes = "1000000TB""#,
    );
    let mut s = start_with_config(tmp.path(), &cfg);
    init_unseal(&mut s).await;

    let (st, h) = health(&s, "").await;
    assert_eq!(st, 503, "{h}");
    assert_eq!(h["sealed"], false, "{h}");
    assert_eq!(h["initialized"], true, "{h}");
    assert_eq!(h["audit_failure"], "disk_full", "{h}");
    // Overridable like sealedcode/standbycode; bad values are 400s.
    let (st, h) = health(&s, "?auditfailcode=473").await;
    assert_eq!(st, 473, "{h}");
    let (st, _) = health(&s, "?auditfailcode=nope").await;
    assert_eq!(st, 400);
    // It tells the truth: requests are refused meanwhile.
    let r = s
        .client()
        .get(s.url("sys/mounts"))
        .header("X-Vault-Token", &s.root_token)
        .send()
        .await
        .expect("mounts");
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("audit log storage is full"), "{body}");
    // A request refused for its token is refused for audit first: it could
    // not be recorded either.
    let r = s
        .client()
        .get(s.url("sys/mounts"))
        .send()
        .await
        .expect("mounts");
    assert_eq!(r.status().as_u16(), 503);
}
