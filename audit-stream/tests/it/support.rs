//! Shared helpers: events carrying known secrets, and reading log lines back.

use custos_audit::LogDir;

use custos_audit::event::AuditWrapInfo;
use custos_audit::{AuditAuth, AuditEvent, AuditRequest, AuditResponse, Salt};
use serde_json::{Value, json};

pub const SECRET: &str = "s3cr3t-value";
pub const TOKEN: &str = "hvs.CAESIraw-client-token";
pub const ACCESSOR: &str = "accessor-raw-1234";

pub fn salt() -> Salt {
    Salt::new(b"custos-test-salt-0123456789abcdef".to_vec()).expect("salt")
}

fn auth() -> AuditAuth {
    AuditAuth {
        client_token: TOKEN.into(),
        accessor: ACCESSOR.into(),
        display_name: "token".into(),
        policies: vec!["default".into(), "app".into()],
        token_type: "service".into(),
        ..Default::default()
    }
}

fn request(id: &str) -> AuditRequest {
    let mut req = AuditRequest::new(id, "update", "secret/data/app");
    req.mount_point = "secret/".into();
    req.mount_type = "kv".into();
    req.client_token = TOKEN.into();
    req.client_token_accessor = ACCESSOR.into();
    req.remote_address = "127.0.0.1".into();
    req.remote_port = 40000;
    req.data = Some(json!({"data": {"password": SECRET, "retries": 3, "nested": [SECRET]}}));
    req
}

/// A request event whose token, accessor and body hold the known secrets.
pub fn request_event(id: &str) -> AuditEvent {
    AuditEvent::request(Some(auth()), request(id))
}

/// A response event that also returns the secret and issues a token.
pub fn response_event(id: &str) -> AuditEvent {
    let resp = AuditResponse {
        mount_point: "secret/".into(),
        mount_type: "kv".into(),
        auth: Some(auth()),
        data: Some(json!({"data": {"password": SECRET}})),
        wrap_info: Some(AuditWrapInfo {
            token: TOKEN.into(),
            accessor: ACCESSOR.into(),
            ttl: 60,
            ..Default::default()
        }),
        ..Default::default()
    };
    AuditEvent::response(Some(auth()), request(id), resp, None)
}

/// Every segment's text, concatenated in log order, and every line parsed
/// as JSON (panics on a line that is not JSON or a segment not ending in a
/// newline).
pub fn read_log(dir: impl Into<LogDir>) -> (String, Vec<Value>) {
    let dir: LogDir = dir.into();
    let mut text = String::new();
    for seg in dir.segments().expect("list segments") {
        let t = std::fs::read_to_string(&seg.path).expect("read segment");
        assert!(
            t.is_empty() || t.ends_with('\n'),
            "segment must end with a newline"
        );
        text.push_str(&t);
    }
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line is not JSON ({e}): {l}")))
        .collect();
    (text, lines)
}
