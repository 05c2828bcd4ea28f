//! Response wrapping, as Vault's `vault/wrapping.go` and the
//! `sys/wrapping/*` handlers of `vault/logical_system.go`.
//!
//! A client asks for wrapping with the `X-Vault-Wrap-TTL` header (parsed by
//! `crate::http` through [`wrap_ttl_of`] into `Request::wrap_ttl`), or a
//! backend asks for it by returning a [`WrapInfo`] without a token
//! (`sys/wrapping/rewrap`). After the backend answered and before the
//! response is audited, `Core::handle_request` calls [`wrap_response`]: it
//! creates a wrapping token (orphan, single use, TTL-bound, policy
//! `response-wrapping`) and stores the response, rendered as the HTTP body it
//! would have been, in that token's cubbyhole (`response`, plus `wrapinfo`
//! for lookups) through the `cubbyhole/` mount's storage. The client, and the
//! audit log, see only `wrap_info` (token, accessor, TTL, creation time and
//! path, wrapped accessor); audit devices HMAC the token and accessors.
//!
//! `sys/wrapping/lookup`, `unwrap` and `rewrap` name a wrapping token in the
//! body (`token`) or as the client token. [`intercept`] checks it before the
//! pipeline looks at the client token, as Vault's request handling does: an
//! unknown, expired, used or non-wrapping token is `400 wrapping token is not
//! valid or does not exist` and changes nothing. `lookup` is unauthenticated
//! and answered there (audited like any request); for `unwrap` and `rewrap`
//! the cubbyhole is read into `Request::unwrapping`, because the pipeline's
//! spending of a caller's one use revokes the token and empties it. The
//! one use is what makes an unwrap happen once: the pipeline spends it when
//! the wrapping token is the caller, [`handle_sys`] when it came in the body;
//! whoever loses that race gets the same 400 (or 403) and nothing.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::core::Unsealed;
use crate::engines::cubbyhole::entry_key;
use crate::error::{CoreError, Result};
use crate::logical::{AuthResponse, Ctx, Operation, Request, Response, Secret, WrapInfo};
use crate::metrics as m;
use crate::policy::RESPONSE_WRAPPING_POLICY;
use crate::storage::BatchOp;
use crate::token::{CreateTokenRequest, TokenEntry};

/// The request header that asks for a wrapped response.
pub const WRAP_TTL_HEADER: &str = "x-vault-wrap-ttl";

const LOOKUP: &str = "sys/wrapping/lookup";
const UNWRAP: &str = "sys/wrapping/unwrap";
const REWRAP: &str = "sys/wrapping/rewrap";

/// Vault's `ErrInvalidWrappingToken`.
const INVALID: &str = "wrapping token is not valid or does not exist";

/// Where in a wrapping token's cubbyhole the wrapped response and its
/// creation details are kept (the same names as Vault's).
const RESPONSE_KEY: &str = "response";
const WRAPINFO_KEY: &str = "wrapinfo";

fn invalid() -> CoreError {
    CoreError::BadRequest(INVALID.into())
}

/// A wrapping token that failed a check before the pipeline (Vault answers
/// these 403, with its words).
fn validation_error(why: &str) -> CoreError {
    CoreError::Forbidden(format!("error validating wrapping token: {why}"))
}

// ---- the header ------------------------------------------------------------

/// `X-Vault-Wrap-TTL` from the request headers, in whole seconds (0 when
/// absent), or a 400 with Vault's words.
pub fn wrap_ttl_of(headers: &http::HeaderMap) -> Result<i64> {
    let Some(v) = headers.get(WRAP_TTL_HEADER) else {
        return Ok(0);
    };
    let raw = v.to_str().map_err(|_| {
        CoreError::bad_request("error parsing X-Vault-Wrap-TTL header: invalid header value")
    })?;
    parse_wrap_ttl(raw)
        .map_err(|e| CoreError::bad_request(format!("error parsing X-Vault-Wrap-TTL header: {e}")))
}

/// Vault's `parseutil.ParseDurationSecond` for the header: an integer is
/// seconds, `<n>d` days, anything else a Go duration (`5m`, `1h30m`), with
/// Go's error messages. Fractions of a second are dropped, but a TTL under
/// a second is one second (a wrapped answer that nobody could unwrap helps
/// no one; OpenBao keeps the sub-second TTL).
pub fn parse_wrap_ttl(raw: &str) -> std::result::Result<i64, String> {
    const NEGATIVE: &str = "requested wrap ttl cannot be negative";
    let s = raw.trim();
    if s.is_empty() {
        return Ok(0);
    }
    if let Ok(n) = s.parse::<i64>() {
        return if n < 0 { Err(NEGATIVE.into()) } else { Ok(n) };
    }
    if let Some(days) = s.strip_suffix('d') {
        let n: i64 = days
            .parse()
            .map_err(|_| format!("strconv.ParseInt: parsing {days:?}: invalid syntax"))?;
        return if n < 0 {
            Err(NEGATIVE.into())
        } else {
            Ok(n.saturating_mul(86_400))
        };
    }
    let secs = go_parse_duration(s)?;
    if secs < 0.0 {
        return Err(NEGATIVE.into());
    }
    Ok(if secs > 0.0 && secs < 1.0 {
        1
    } else {
        secs as i64
    })
}

/// Go's `time.ParseDuration`, in seconds, with its error messages.
fn go_parse_duration(orig: &str) -> std::result::Result<f64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let (neg, mut s) = match orig.as_bytes().first() {
        Some(b'-') => (true, &orig[1..]),
        Some(b'+') => (false, &orig[1..]),
        _ => (false, orig),
    };
    if s == "0" {
        return Ok(0.0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total = 0.0f64;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let int_part = &s[..int_end];
        s = &s[int_end..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            frac_part = &rest[..frac_end];
            s = &rest[frac_end..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_end = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_end == 0 {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let unit = &s[..unit_end];
        s = &s[unit_end..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {orig:?}")),
        };
        let number: f64 = format!(
            "{}.{}",
            if int_part.is_empty() { "0" } else { int_part },
            if frac_part.is_empty() { "0" } else { frac_part }
        )
        .parse()
        .map_err(|_| invalid())?;
        total += number * scale;
        // Go's limit: a duration fits in an int64 of nanoseconds.
        if total > 9_223_372_036.854_775 {
            return Err(invalid());
        }
    }
    Ok(if neg { -total } else { total })
}

// ---- wrapping a response ---------------------------------------------------

/// The JSON body a response would have had, as Vault stores it in the
/// cubbyhole (`LogicalResponseToHTTPResponse` with the request's id).
fn http_body(request_id: &str, resp: &Response) -> Value {
    let auth = resp
        .auth
        .as_ref()
        .and_then(|a| serde_json::to_value(a).ok())
        .unwrap_or(Value::Null);
    json!({
        "request_id": request_id,
        "lease_id": resp.lease_id,
        "renewable": resp.renewable,
        "lease_duration": resp.lease_duration,
        "data": resp.data.clone().map(Value::Object).unwrap_or(Value::Null),
        "wrap_info": null,
        "warnings": if resp.warnings.is_empty() { Value::Null } else { json!(resp.warnings) },
        "auth": auth,
    })
}

/// The client's answer to a wrapped request: Vault's envelope with nothing
/// but `wrap_info` (not even the request id).
pub fn wrapped_body(w: &WrapInfo) -> Value {
    let mut info = json!({
        "token": w.token.expose(),
        "accessor": w.accessor,
        "ttl": w.ttl,
        "creation_time": w.creation_time,
        "creation_path": w.creation_path,
    });
    if !w.wrapped_accessor.is_empty()
        && let Some(o) = info.as_object_mut()
    {
        o.insert("wrapped_accessor".into(), json!(w.wrapped_accessor));
    }
    json!({
        "request_id": "",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": info,
        "warnings": null,
        "auth": null,
    })
}

/// The wrapping TTL for this response: the shorter of the client's
/// (`X-Vault-Wrap-TTL`) and the backend's, when either asks.
fn wanted_ttl(req: &Request, resp: &Response) -> i64 {
    let from_backend = resp
        .wrap_info
        .as_ref()
        .filter(|w| w.token.is_empty())
        .map_or(0, |w| w.ttl.max(0));
    match (from_backend, req.wrap_ttl.max(0)) {
        (0, r) => r,
        (b, 0) => b,
        (b, r) => b.min(r),
    }
}

/// Wrap a successful response if the request or the backend asked for it;
/// anything else passes through. Called by the pipeline after the backend
/// and before the response is audited, so the audit log records `wrap_info`
/// and not the wrapped secret.
pub async fn wrap_response(
    u: &Unsealed,
    req: &Request,
    result: Result<Response>,
) -> Result<Response> {
    let mut resp = result?;
    let ttl = wanted_ttl(req, &resp);
    let asked = resp.wrap_info.take();
    // Nothing to wrap: an empty 204, an error status, a raw body.
    let empty = resp.data.is_none() && resp.auth.is_none() && resp.warnings.is_empty();
    if ttl == 0 || empty || resp.raw_body || resp.status.is_some_and(|s| s >= 400) {
        return Ok(resp);
    }
    let Some(cubbyhole) = u.tokens.cubbyhole_view() else {
        return Err(CoreError::internal("the cubbyhole mount is not available"));
    };
    let rewrap = req.path == REWRAP;
    let (token, entry) = u
        .tokens
        .create(
            None,
            CreateTokenRequest {
                policies: vec![RESPONSE_WRAPPING_POLICY.to_string()],
                display_name: "token".into(),
                path: req.path.clone(),
                num_uses: 1,
                ttl,
                explicit_max_ttl: ttl,
                renewable: false,
                orphan: true,
                ..Default::default()
            },
        )
        .await?;
    let now_ns =
        i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX);
    let creation_time = crate::engines::kv::fmt_time(now_ns);
    let creation_path = match (&asked, rewrap) {
        (Some(a), true) => a.creation_path.clone(),
        _ => req.path.clone(),
    };
    let wrapped_accessor = match &resp.auth {
        Some(a) => a.accessor.clone(),
        None if req.mount_type == "approle" => resp
            .data
            .as_ref()
            .and_then(|d| d.get("secret_id_accessor"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    };
    // A rewrap stores the response it was handed, not a response about it.
    let stored = if rewrap {
        resp.data
            .as_ref()
            .and_then(|d| d.get(RESPONSE_KEY))
            .cloned()
            .unwrap_or(Value::Null)
    } else {
        Value::String(http_body(&req.id, &resp).to_string())
    };
    let info = json!({
        "creation_ttl": ttl,
        "creation_time": creation_time,
        "creation_path": creation_path,
    });
    let ops = [
        (RESPONSE_KEY, json!({ RESPONSE_KEY: stored })),
        (WRAPINFO_KEY, info),
    ]
    .into_iter()
    .map(|(k, v)| {
        Ok(BatchOp::Put {
            key: entry_key(&entry, k),
            value: serde_json::to_vec(&v).map_err(CoreError::internal)?,
        })
    })
    .collect::<Result<Vec<_>>>();
    let stored = match ops {
        Ok(ops) => cubbyhole.batch(ops).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        // Not handed out: take the token back.
        if let Err(revoke) = u.tokens.revoke_orphan(&entry.id_hash).await {
            tracing::warn!(error = %revoke, "revoking an unused wrapping token failed; it expires with its TTL");
        }
        tracing::error!(error = %e, path = %req.path, "failed to store a wrapped response");
        return Err(e);
    }
    m::counter_inc(m::WRAPPING_TOKENS_CREATED, &[]);
    Ok(Response {
        warnings: resp.warnings,
        wrap_info: Some(WrapInfo {
            token: Secret::new(token),
            accessor: entry.accessor.clone(),
            ttl,
            creation_time,
            creation_path,
            wrapped_accessor,
        }),
        ..Default::default()
    })
}

// ---- lookup, unwrap, rewrap ------------------------------------------------

/// What a wrapping token's cubbyhole held, read before the pipeline spends
/// the token's use (see [`intercept`]).
pub struct Unwrapping {
    /// The wrapping token.
    pub entry: TokenEntry,
    /// Named in the body (`token`), not as the client token: the handler
    /// spends its use itself.
    pub third_party: bool,
    /// The wrapped response, as the JSON body it was.
    response: Secret,
    /// `wrapinfo`: `creation_ttl` (seconds), `creation_time`, `creation_path`.
    info: Map<String, Value>,
}

impl std::fmt::Debug for Unwrapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unwrapping")
            .field("third_party", &self.third_party)
            .finish_non_exhaustive()
    }
}

/// The wrapping token a `sys/wrapping/*` request names: `token` in the body
/// (third party) or the client token, with Vault's checks and words.
fn named_token(req: &Request) -> Result<(String, bool)> {
    match req.data.get("token") {
        None | Some(Value::Null) => match &req.client_token {
            Some(t) if !t.is_empty() => Ok((t.expose().to_string(), false)),
            _ => Err(validation_error("token is empty")),
        },
        Some(Value::String(s)) if s.is_empty() => {
            Err(validation_error("empty token in request body"))
        }
        Some(Value::String(s)) => Ok((s.clone(), true)),
        Some(_) => Err(validation_error("could not decode token in request body")),
    }
}

/// The valid wrapping token behind `token`, or `None`.
async fn wrapping_entry(u: &Unsealed, token: &str) -> Result<Option<TokenEntry>> {
    Ok(u.tokens
        .lookup(token)
        .await?
        .filter(TokenEntry::is_wrapping))
}

/// Read a JSON object from a wrapping token's cubbyhole.
async fn read_cubbyhole(
    u: &Unsealed,
    entry: &TokenEntry,
    key: &str,
) -> Result<Option<Map<String, Value>>> {
    let Some(view) = u.tokens.cubbyhole_view() else {
        return Err(CoreError::internal("the cubbyhole mount is not available"));
    };
    view.get_json(&entry_key(entry, key)).await
}

/// Audit a request answered here, before the pipeline: the request and its
/// outcome in one sync, as the pipeline does for requests that change
/// nothing. Fails closed.
async fn audit_answered(u: &Unsealed, req: &Request, result: Result<Response>) -> Result<Response> {
    let error = result.as_ref().err().map(|e| e.messages().join("; "));
    let request = crate::audit::request_event(req, None, error.as_deref());
    let response = crate::audit::response_event(req, None, &result);
    if let Err(e) = u.audit.log_pair(request, response).await {
        m::counter_inc(m::AUDIT_LOG_RESPONSE_FAILURE, &[]);
        tracing::error!(error = %e, "audit: no device recorded a wrapping token request; refusing it");
        return Err(if e.is_disk_full() {
            CoreError::Unavailable(
                "audit log storage is full: requests are refused until space is freed".into(),
            )
        } else {
            CoreError::Audit("no audit device recorded the request".into())
        });
    }
    m::counter_inc(m::AUDIT_LOG_REQUEST, &[]);
    m::counter_inc(m::AUDIT_LOG_RESPONSE, &[]);
    result
}

/// Called by the pipeline before it looks at the client token. For
/// `sys/wrapping/lookup|unwrap|rewrap` it checks the wrapping token (and
/// answers, audited, when the token is not valid, and for every lookup);
/// for a valid unwrap or rewrap it reads the cubbyhole into
/// `req.unwrapping` and lets the pipeline go on (`None`). Every other path
/// goes on untouched.
pub async fn intercept(u: &Unsealed, req: &mut Request) -> Option<Result<Response>> {
    let path = req.path.as_str();
    if !matches!(path, LOOKUP | UNWRAP | REWRAP) {
        return None;
    }
    req.mount_point = "sys/".into();
    req.mount_type = "system".into();
    req.relative_path = path.trim_start_matches("sys/").to_string();
    let checked = async {
        let (token, third_party) = named_token(req)?;
        let entry = wrapping_entry(u, &token).await?.ok_or_else(invalid)?;
        Ok::<_, CoreError>((entry, third_party))
    }
    .await;
    let (entry, third_party) = match checked {
        Ok(found) => found,
        Err(e) => {
            if req.path == UNWRAP {
                m::counter_inc(m::WRAPPING_UNWRAPS, &[("outcome", "invalid".to_string())]);
            }
            return Some(audit_answered(u, req, Err(e)).await);
        }
    };
    if req.path == LOOKUP {
        let answer = match req.operation {
            Operation::Read | Operation::Update => lookup(u, &entry).await,
            _ => Err(CoreError::UnsupportedOperation),
        };
        return Some(audit_answered(u, req, answer).await);
    }
    let read = async {
        let response = read_cubbyhole(u, &entry, RESPONSE_KEY)
            .await?
            .and_then(|mut m| match m.remove(RESPONSE_KEY) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            })
            .ok_or_else(invalid)?;
        let info = read_cubbyhole(u, &entry, WRAPINFO_KEY)
            .await?
            .unwrap_or_default();
        Ok::<_, CoreError>((response, info))
    }
    .await;
    match read {
        Ok((response, info)) => {
            req.unwrapping = Some(Arc::new(Unwrapping {
                entry,
                third_party,
                response: Secret::new(response),
                info,
            }));
            None
        }
        Err(e) => Some(audit_answered(u, req, Err(e)).await),
    }
}

/// `sys/wrapping/lookup`: when and where the token was made, and its TTL.
async fn lookup(u: &Unsealed, entry: &TokenEntry) -> Result<Response> {
    let Some(info) = read_cubbyhole(u, entry, WRAPINFO_KEY).await? else {
        return Err(CoreError::bad_request(
            "no information found; wrapping token may be from a previous OpenBao version",
        ));
    };
    let mut data = Map::new();
    for k in ["creation_ttl", "creation_time", "creation_path"] {
        if let Some(v) = info.get(k) {
            data.insert(k.to_string(), v.clone());
        }
    }
    Ok(Response::data(data))
}

/// The wrapping routes of the system backend (`sys/wrapping/wrap`, `unwrap`,
/// `rewrap`), by mount-relative path.
pub async fn handle_sys(u: &Unsealed, ctx: &Ctx<'_>) -> Result<Option<Response>> {
    let req = ctx.req;
    match req.relative_path.as_str() {
        "wrapping/wrap" => {
            if req.wrap_ttl <= 0 {
                return Err(CoreError::bad_request(
                    "endpoint requires response wrapping to be used",
                ));
            }
            Ok(Some(Response::data(req.data.clone())))
        }
        "wrapping/unwrap" => {
            let w = claim(u, req).await.inspect_err(|_| {
                m::counter_inc(m::WRAPPING_UNWRAPS, &[("outcome", "invalid".to_string())]);
            })?;
            let body: Map<String, Value> = serde_json::from_str(w.response.expose())
                .map_err(|_| CoreError::internal("error decoding wrapped response"))?;
            m::counter_inc(m::WRAPPING_UNWRAPS, &[("outcome", "success".to_string())]);
            Ok(Some(Response::raw(body)))
        }
        "wrapping/rewrap" => {
            let w = claim(u, req).await?;
            let ttl = w
                .info
                .get("creation_ttl")
                .and_then(Value::as_i64)
                .ok_or_else(|| {
                    CoreError::internal("creation_ttl value in wrapping information was nil")
                })?;
            let creation_path = w
                .info
                .get("creation_path")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    CoreError::internal("creation_path value in wrapping information was nil")
                })?
                .to_string();
            let mut data = Map::new();
            data.insert(
                RESPONSE_KEY.into(),
                Value::String(w.response.expose().to_string()),
            );
            Ok(Some(Response {
                data: Some(data),
                wrap_info: Some(WrapInfo {
                    ttl,
                    creation_path,
                    ..Default::default()
                }),
                ..Default::default()
            }))
        }
        _ => Err(CoreError::NotFound(format!(
            "unsupported path: {}",
            req.path
        ))),
    }
}

/// The wrapping token's contents, once its one use is spent for this
/// request: by the pipeline when it was the client token, here when it came
/// in the body (losing that race is `400 invalid`). Spending the last use
/// revokes the token and empties its cubbyhole.
async fn claim(u: &Unsealed, req: &Request) -> Result<Arc<Unwrapping>> {
    let Some(w) = req.unwrapping.clone() else {
        return Err(invalid());
    };
    if w.third_party && u.tokens.use_token(&w.entry).await?.is_none() {
        return Err(invalid());
    }
    Ok(w)
}

/// For the audit log: an unwrap's answer as the response it holds (data,
/// auth, warnings), as Vault audits it, instead of the raw body the client
/// gets. `None` for every other response.
pub fn audited_unwrap(req: &Request, resp: &Response) -> Option<Response> {
    if req.path != UNWRAP || !resp.raw_body {
        return None;
    }
    let body = resp.data.as_ref()?;
    let auth = body.get("auth").and_then(Value::as_object).map(|a| {
        let s = |k: &str| {
            a.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let list = |k: &str| -> Vec<String> {
            a.get(k)
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        AuthResponse {
            client_token: s("client_token"),
            accessor: s("accessor"),
            policies: list("policies"),
            token_policies: list("token_policies"),
            metadata: a.get("metadata").and_then(Value::as_object).map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            }),
            lease_duration: a.get("lease_duration").and_then(Value::as_i64).unwrap_or(0),
            renewable: a.get("renewable").and_then(Value::as_bool).unwrap_or(false),
            entity_id: s("entity_id"),
            token_type: s("token_type"),
            orphan: a.get("orphan").and_then(Value::as_bool).unwrap_or(false),
            num_uses: a.get("num_uses").and_then(Value::as_i64).unwrap_or(0),
            ..Default::default()
        }
    });
    Some(Response {
        data: body.get("data").and_then(Value::as_object).cloned(),
        auth,
        warnings: body
            .get("warnings")
            .and_then(Value::as_array)
            .map(|w| {
                w.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_ttl_header_parses_like_vault() {
        assert_eq!(parse_wrap_ttl("300"), Ok(300));
        assert_eq!(parse_wrap_ttl(" 30 "), Ok(30));
        assert_eq!(parse_wrap_ttl("5m"), Ok(300));
        assert_eq!(parse_wrap_ttl("1h30m"), Ok(5400));
        assert_eq!(parse_wrap_ttl("2d"), Ok(172_800));
        assert_eq!(parse_wrap_ttl("1.5m"), Ok(90));
        assert_eq!(parse_wrap_ttl("0"), Ok(0));
        assert_eq!(parse_wrap_ttl("500ms"), Ok(1));
        assert_eq!(parse_wrap_ttl("1.5s"), Ok(1));
        assert_eq!(
            parse_wrap_ttl("abc").unwrap_err(),
            r#"time: invalid duration "abc""#
        );
        assert_eq!(
            parse_wrap_ttl("5x").unwrap_err(),
            r#"time: unknown unit "x" in duration "5x""#
        );
        assert_eq!(
            parse_wrap_ttl("1.5").unwrap_err(),
            r#"time: missing unit in duration "1.5""#
        );
        assert_eq!(
            parse_wrap_ttl("-5").unwrap_err(),
            "requested wrap ttl cannot be negative"
        );
        assert_eq!(
            parse_wrap_ttl("-5m").unwrap_err(),
            "requested wrap ttl cannot be negative"
        );
        assert!(parse_wrap_ttl("99999999999h").is_err());
    }

    #[test]
    fn the_shorter_ttl_wins() {
        let mut req = Request::new(Operation::Read, "x");
        let mut resp = Response::default();
        assert_eq!(wanted_ttl(&req, &resp), 0);
        req.wrap_ttl = 60;
        assert_eq!(wanted_ttl(&req, &resp), 60);
        resp.wrap_info = Some(WrapInfo {
            ttl: 30,
            ..Default::default()
        });
        assert_eq!(wanted_ttl(&req, &resp), 30);
        req.wrap_ttl = 0;
        assert_eq!(wanted_ttl(&req, &resp), 30);
    }

    #[test]
    fn the_wrapped_answer_shows_only_wrap_info() {
        let w = WrapInfo {
            token: Secret::new("hvs.x"),
            accessor: "acc".into(),
            ttl: 60,
            creation_time: "t".into(),
            creation_path: "secret/data/a".into(),
            wrapped_accessor: String::new(),
        };
        let v = wrapped_body(&w);
        assert_eq!(v["request_id"], "");
        assert!(v["data"].is_null() && v["auth"].is_null());
        assert_eq!(v["wrap_info"]["ttl"], 60);
        assert!(v["wrap_info"].get("wrapped_accessor").is_none());
        let dbg = format!("{w:?}");
        assert!(!dbg.contains("hvs.x"), "{dbg}");
    }
}
