//! The HTTP API: Vault's wire protocol on top of [`Core`].
//!
//! Requests arrive from the listeners in `crate::server` (plain TCP or TLS);
//! this module turns them into [`Request`]s — method to operation (`LIST`
//! and `?list=true` to list), `X-Vault-Token` or `Authorization: Bearer`,
//! `X-Vault-Wrap-TTL` (`crate::wrapping`), `X-Vault-Index` and
//! `X-Vault-Inconsistent` (a standby's own reads, `crate::forward`; every
//! answer of the pipeline on a cluster node carries `X-Vault-Index`),
//! JSON body or query string to data, a body size limit — and renders the
//! outcome in Vault's envelope (`request_id`, `lease_id`, `renewable`,
//! `lease_duration`, `data`, `wrap_info`, `warnings`, `auth`) or as
//! `{"errors":[...]}` with the status from [`CoreError::status`]. Nothing
//! here knows about engines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use crate::core::Core;
use crate::error::CoreError;
use crate::logical::{Operation, Request, Response, Secret};
use crate::metrics as m;

/// Vault's default `max_request_size`: 32 MiB.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 32 * 1024 * 1024;

/// Per-listener HTTP settings.
#[derive(Clone)]
pub struct HttpState {
    pub core: Arc<Core>,
    /// 0 means unlimited (Vault: a negative `max_request_size`).
    pub max_request_size: usize,
    /// Serve `sys/metrics` without a token (listener `telemetry` block).
    pub unauthenticated_metrics: bool,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Vault's unauthenticated ceremony endpoints this listener serves
    /// (`crate::ceremony::unauthenticated`).
    pub unauthed_ceremonies: crate::ceremony::Unauthed,
}

/// The client address a connection came from, for any listener type.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Build the axum router for one listener.
pub fn router(state: HttpState) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(state))
}

fn error_response(status: u16, errors: Vec<String>) -> axum::response::Response {
    let body = serde_json::to_vec(&json!({ "errors": errors }))
        .unwrap_or_else(|_| b"{\"errors\":[]}".to_vec());
    let mut resp = axum::response::Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn core_error(e: &CoreError) -> axum::response::Response {
    error_response(e.status(), e.messages())
}

fn json_response(status: u16, value: &Value) -> axum::response::Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = axum::response::Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(_) => error_response(500, vec!["failed to encode response".into()]),
    }
}

/// Paths whose `data` Vault also copies to the top level of the body, for
/// clients written against the old raw responses.
fn legacy_top_level(path: &str, op: Operation) -> bool {
    let read = op == Operation::Read
        && (matches!(path, "sys/mounts" | "sys/auth" | "sys/audit" | "sys/policy")
            || path.starts_with("sys/mounts/")
            || path.starts_with("sys/auth/")
            || path.starts_with("sys/policy/"));
    // OpenBao also copies a mount move's `migration_id` to the top level.
    read || (path == "sys/remount" && matches!(op, Operation::Update | Operation::Create))
}

fn render(req_id: &str, path: &str, op: Operation, resp: Response) -> axum::response::Response {
    // A wrapped response: the client gets only `wrap_info` (crate::wrapping).
    if let Some(w) = resp.wrap_info.as_ref().filter(|w| !w.token.is_empty()) {
        return json_response(200, &crate::wrapping::wrapped_body(w));
    }
    if resp.raw_body {
        let status = resp.status.unwrap_or(200);
        return json_response(status, &Value::Object(resp.data.unwrap_or_default()));
    }
    if resp.status == Some(204)
        && resp.data.is_none()
        && resp.auth.is_none()
        && resp.warnings.is_empty()
    {
        let mut r = axum::response::Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        return r;
    }
    let status = resp.status.filter(|s| *s != 204).unwrap_or(200);
    let warnings = if resp.warnings.is_empty() {
        Value::Null
    } else {
        json!(resp.warnings)
    };
    let auth = match &resp.auth {
        Some(a) => serde_json::to_value(a).unwrap_or(Value::Null),
        None => Value::Null,
    };
    let top = legacy_top_level(path, op);
    let data = resp.data.map(Value::Object).unwrap_or(Value::Null);
    let mut body = json!({
        "request_id": req_id,
        "lease_id": resp.lease_id,
        "renewable": resp.renewable,
        "lease_duration": resp.lease_duration,
        "data": data,
        "wrap_info": null,
        "warnings": warnings,
        "auth": auth,
    });
    if top
        && let Some(d) = data_clone(&body)
        && let Some(b) = body.as_object_mut()
    {
        for (k, v) in d {
            b.entry(k).or_insert(v);
        }
    }
    json_response(status, &body)
}

fn data_clone(body: &Value) -> Option<Map<String, Value>> {
    body.get("data").and_then(Value::as_object).cloned()
}

fn operation_of(method: &Method, query_list: bool) -> Option<Operation> {
    Some(match method.as_str() {
        "GET" | "HEAD" if query_list => Operation::List,
        "GET" | "HEAD" => Operation::Read,
        "LIST" => Operation::List,
        "POST" | "PUT" => Operation::Update,
        "PATCH" => Operation::Patch,
        "DELETE" => Operation::Delete,
        _ => return None,
    })
}

fn token_of(headers: &HeaderMap) -> Option<Secret> {
    if let Some(v) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(Secret::new(v.trim()));
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Secret::new(rest.trim()))
}

fn parse_query(uri: &Uri) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(q) = uri.query() {
        for (k, v) in form_urlencoded_pairs(q) {
            out.insert(k, Value::String(v));
        }
    }
    out
}

/// Minimal `application/x-www-form-urlencoded` decoding for query strings.
fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How much of an oversize body we read and discard before answering 413,
/// so that clients which send the whole body before reading (most do) see
/// the 413 rather than a reset connection.
const OVERSIZE_DRAIN: usize = 64 * 1024 * 1024;

async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, CoreError> {
    let limit = if limit == 0 { usize::MAX } else { limit };
    let mut buf = bytes::BytesMut::new();
    let mut discarded: Option<usize> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| CoreError::bad_request("failed to read request body"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match discarded.as_mut() {
            Some(n) => {
                *n += data.len();
                if *n > OVERSIZE_DRAIN {
                    break;
                }
            }
            None if buf.len() + data.len() > limit => {
                discarded = Some(buf.len() + data.len());
                buf = bytes::BytesMut::new();
            }
            None => buf.extend_from_slice(&data),
        }
    }
    if discarded.is_some() {
        return Err(CoreError::PayloadTooLarge(
            "http: request body too large".into(),
        ));
    }
    Ok(buf.freeze())
}

fn parse_json_body(bytes: &[u8]) -> Result<Map<String, Value>, CoreError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(CoreError::bad_request(
            "failed to decode JSON input: the body must be a JSON object",
        )),
        Err(e) => Err(CoreError::bad_request(format!(
            "failed to decode JSON input: {e}"
        ))),
    }
}

async fn handle(
    State(st): State<Arc<HttpState>>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> axum::response::Response {
    // The request pipeline's future holds every stage's state (a few KiB);
    // boxed once here, the handler future tower and hyper move around is a
    // pointer (the profile showed ~5 KiB copied twice per request).
    Box::pin(handle_request(st, client, method, uri, headers, body)).await
}

async fn handle_request(
    st: Arc<HttpState>,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> axum::response::Response {
    let started = Instant::now();
    let mut remote = Some(client.0);
    let Some(path) = uri.path().strip_prefix("/v1/") else {
        return error_response(404, vec![]);
    };
    let mut path = path.trim_start_matches('/').to_string();
    // A standby sends the request to the active node (crate::forward); the
    // active node audits the client a cluster member forwarded it for.
    let mut forwarded_id = None;
    // A peer's fan-out question (crate::audit_nodes), proved by the same
    // signed header: the token is checked but spends no use.
    let mut fan_out = false;
    // A listener that does not serve Vault's unauthenticated ceremonies
    // refuses them itself, before a standby would forward them.
    if let Some(e) = crate::ceremony::refused(st.unauthed_ceremonies, &path) {
        return core_error(&e);
    }
    // A read a standby serves from its own state for the client's
    // X-Vault-Index (crate::forward); forwarded if the pipeline finds the
    // route or token needs the active node.
    let mut standby_read = false;
    if st.core.cluster().is_some()
        && let Some(wanted) = headers
            .contains_key(crate::forward::INDEX_HEADER)
            .then(|| crate::forward::wanted_index(&st.core, &headers))
    {
        use crate::forward::StandbyRead;
        let wanted = match wanted {
            Ok(w) => w,
            // Sealed: say so rather than judge the index.
            Err(_) if st.core.is_sealed() => None,
            Err(e) => return core_error(&e),
        };
        let list = uri.query().is_some_and(|q| {
            form_urlencoded_pairs(q)
                .iter()
                .any(|(k, v)| k == "list" && matches!(v.as_str(), "true" | "1"))
        });
        if let Some(wanted) = wanted
            && crate::forward::is_standby(&st.core)
            && crate::forward::may_read_locally(&path, &method, list, &headers)
        {
            match crate::forward::standby_read(&st.core, wanted).await {
                StandbyRead::Local => standby_read = true,
                StandbyRead::Forward => crate::forward::count_standby_read("forwarded"),
                StandbyRead::Inconsistent => {
                    crate::forward::count_standby_read("inconsistent");
                    return core_error(&CoreError::PreconditionFailed(
                        crate::forward::INDEX_NOT_PRESENT.into(),
                    ));
                }
            }
        }
    }
    if st.core.cluster().is_some() && !standby_read {
        match crate::forward::target(&st.core, &path, &headers).await {
            Some(Ok(base)) => {
                return forward(&st, base, &method, &uri, &headers, body, client).await;
            }
            Some(Err(e)) => return core_error(&e),
            None => {
                if let Some(origin) = crate::forward::verified_origin(&st.core, &headers, &path) {
                    remote = Some(origin.client);
                    forwarded_id = Some(origin.request_id);
                    fan_out = origin.fan_out;
                }
            }
        }
    }
    let mut query = parse_query(&uri);
    let list_flag = matches!(
        query.remove("list").as_ref().and_then(Value::as_str),
        Some("true" | "1")
    );
    let Some(op) = operation_of(&method, list_flag) else {
        return error_response(405, vec!["unsupported operation".into()]);
    };

    // Vault lists folders: a LIST path always ends in a slash.
    if op == Operation::List && !path.ends_with('/') {
        path.push('/');
    }

    // Metrics endpoint: Prometheus text.
    if path == "sys/metrics" && op == Operation::Read {
        return metrics_endpoint(&st, &headers, &query).await;
    }

    // Raft snapshots stream their bodies both ways (crate::raft_snapshot).
    if crate::raft_snapshot::is_snapshot_path(&path) {
        let token = token_of(&headers);
        let resp = crate::raft_snapshot::serve(&st.core, &method, &path, token, remote, body).await;
        record(&path, op, resp.status().as_u16(), started);
        return resp;
    }

    let bytes = match read_body(body, st.max_request_size).await {
        Ok(b) => b,
        Err(e) => return core_error(&e),
    };
    // Vault checks a PATCH's media type before routing (after reading the
    // body, so the client sees the answer rather than a closed connection).
    if op == Operation::Patch {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim();
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.is_empty() {
            return error_response(400, vec!["mime: no media type".into()]);
        }
        if !media.eq_ignore_ascii_case("application/merge-patch+json") {
            return error_response(
                415,
                vec![format!(
                    "PATCH requires Content-Type of application/merge-patch+json, provided {media}"
                )],
            );
        }
    }

    let mut data = match op {
        Operation::Update | Operation::Patch | Operation::Create => match parse_json_body(&bytes) {
            Ok(d) => d,
            Err(e) => return core_error(&e),
        },
        // Vault reads GET/LIST/DELETE data from the query string.
        _ => Map::new(),
    };
    if matches!(op, Operation::Read | Operation::List | Operation::Delete) {
        for (k, v) in std::mem::take(&mut query) {
            if k != "help" {
                data.insert(k, v);
            }
        }
    }
    // Vault's unauthenticated key ceremonies, when this listener serves them
    // (a request a standby forwarded was admitted by the standby's listener).
    let mut ceremonies = st.unauthed_ceremonies;
    if forwarded_id.is_some() {
        ceremonies = crate::ceremony::Unauthed {
            generate_root: true,
            rekey: true,
        };
    }
    if let Some(result) =
        crate::ceremony::unauthenticated(&st.core, ceremonies, op, &path, &data, remote).await
    {
        let resp = match result {
            Ok(r) => render("", &path, op, r),
            Err(e) => core_error(&e),
        };
        record(&path, op, resp.status().as_u16(), started);
        return head_strip(&method, resp);
    }
    // Unauthenticated system endpoints (work while sealed).
    if let Some(result) = crate::sys::unauthenticated(&st.core, op, &path, &data).await {
        let resp = match result {
            Ok(r) => render("", &path, op, r),
            Err(e) => core_error(&e),
        };
        record(&path, op, resp.status().as_u16(), started);
        return head_strip(&method, resp);
    }

    let mut req = Request::new(op, path.clone());
    if let Some(id) = forwarded_id {
        req.id = id;
    }
    req.data = data;
    req.client_token = token_of(&headers);
    req.wrap_ttl = match crate::wrapping::wrap_ttl_of(&headers) {
        Ok(ttl) => ttl,
        Err(e) => return core_error(&e),
    };
    req.remote_addr = remote;
    // W3C trace context: Core::handle continues the caller's trace.
    if let Some(tp) = headers
        .get(crate::traces::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        req.headers
            .insert(crate::traces::TRACEPARENT.into(), tp.to_string());
    }
    req.standby_read = standby_read;
    req.fan_out = fan_out;
    let req_id = req.id.clone();
    let result = st.core.handle(req).await;
    if standby_read {
        if matches!(result, Err(CoreError::ForwardToActive)) {
            crate::forward::count_standby_read("forwarded");
            let base = match crate::forward::target(&st.core, &path, &headers).await {
                Some(Ok(base)) => base,
                Some(Err(e)) => return core_error(&e),
                // Became the active node meanwhile: the client retries here.
                None => {
                    return core_error(&CoreError::Unavailable(
                        "leadership moved to this node; retry".into(),
                    ));
                }
            };
            let outgoing = crate::forward::Outgoing::Buffered(bytes);
            return forward_body(&st, base, &method, &uri, &headers, outgoing, client).await;
        }
        crate::forward::count_standby_read("local");
    }
    let mount = match st.core.unsealed() {
        Ok(u) => u
            .router
            .route(&path)
            .map(|(m, _)| m.entry.path.clone())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let resp = match result {
        Ok(r) => render(&req_id, &path, op, r),
        Err(CoreError::NotFound(msg)) if msg.is_empty() => error_response(404, vec![]),
        Err(e) => core_error(&e),
    };
    record_mount(&mount, op, resp.status().as_u16(), started);
    let mut resp = resp;
    if st.core.cluster().is_some()
        && let Some(index) = crate::forward::index_header(&st.core)
    {
        resp.headers_mut().insert(
            http::HeaderName::from_static(crate::forward::INDEX_HEADER),
            index,
        );
    }
    head_strip(&method, resp)
}

/// Forward to the active node at `base` (see [`crate::forward`]): the body
/// buffered (within the size limit) so a request can follow a leader that
/// changes under it, except the streamed Raft snapshots.
async fn forward(
    st: &HttpState,
    base: String,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    client: ClientAddr,
) -> axum::response::Response {
    use crate::forward::Outgoing;
    let path = uri.path().trim_start_matches("/v1/");
    let outgoing = if crate::raft_snapshot::is_snapshot_path(path) {
        Outgoing::Streamed(body)
    } else {
        match read_body(body, st.max_request_size).await {
            Ok(b) => Outgoing::Buffered(b),
            Err(e) => return core_error(&e),
        }
    };
    forward_body(st, base, method, uri, headers, outgoing, client).await
}

/// Forward a request whose body is in hand.
async fn forward_body(
    st: &HttpState,
    base: String,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    outgoing: crate::forward::Outgoing,
    client: ClientAddr,
) -> axum::response::Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    match crate::forward::forward(
        &st.core,
        base,
        method,
        uri,
        headers,
        outgoing,
        client.0,
        &request_id,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => core_error(&e),
    }
}

fn head_strip(method: &Method, resp: axum::response::Response) -> axum::response::Response {
    if method == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return axum::response::Response::from_parts(parts, Body::empty());
    }
    resp
}

fn record(path: &str, op: Operation, status: u16, started: Instant) {
    let mount = if path.starts_with("sys/") { "sys/" } else { "" };
    record_mount(mount, op, status, started);
}

fn record_mount(mount: &str, op: Operation, status: u16, started: Instant) {
    // Mount points are operator-chosen and few; unknown paths fold to "".
    let mount = mount.to_string();
    m::counter_inc(
        m::REQUESTS,
        &[
            ("mount", mount.clone()),
            ("operation", op.as_str().to_string()),
            ("status", m::status_class(status).to_string()),
        ],
    );
    m::histogram_record(
        m::REQUEST_SECONDS,
        &[("mount", mount), ("operation", op.as_str().to_string())],
        started.elapsed().as_secs_f64(),
    );
}

async fn metrics_endpoint(
    st: &HttpState,
    headers: &HeaderMap,
    query: &Map<String, Value>,
) -> axum::response::Response {
    if !st.unauthenticated_metrics {
        // Needs a token with read on sys/metrics, through the pipeline.
        let mut req = Request::new(Operation::Read, "sys/metrics");
        req.client_token = token_of(headers);
        req.remote_addr = None;
        if let Err(e) = st.core.handle(req).await {
            return core_error(&e);
        }
    }
    match query.get("format").and_then(Value::as_str) {
        Some("prometheus") | None => {}
        Some(other) => {
            return error_response(400, vec![format!("unsupported metrics format {other:?}")]);
        }
    }
    st.core.publish_seal_metrics();
    let text = crate::metrics::render(&st.metrics);
    let mut resp = axum::response::Response::new(Body::from(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("50%"), "50%");
        let pairs = form_urlencoded_pairs("version=2&list=true&x");
        assert_eq!(pairs[0], ("version".into(), "2".into()));
        assert_eq!(pairs[2], ("x".into(), "".into()));
    }

    #[test]
    fn json_bodies_must_be_objects() {
        assert!(parse_json_body(b"").unwrap().is_empty());
        assert!(parse_json_body(b"{\"a\":1}").is_ok());
        assert!(parse_json_body(b"[1]").is_err());
        assert!(parse_json_body(b"{bad").is_err());
    }
}
