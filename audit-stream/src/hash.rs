//! HMAC-SHA256 hashing of audit events, as Vault does it.
//!
//! Each audit device has its own random [`Salt`]; the core generates it when
//! the device is enabled, keeps it in its barrier-encrypted storage and passes
//! it in when the device is opened. Before a device writes an event it runs
//! [`hash_event`] on its own copy, replacing secrets with
//! `hmac-sha256:<hex>` ([`hmac_sha256`]); `sys/audit-hash` calls
//! [`hmac_sha256`] with the same salt so an operator can find a known value
//! in the log.
//!
//! What is hashed mirrors Vault's `audit/hashstructure.go`:
//! - `auth.client_token`, `request.client_token`, `response.auth.client_token`
//!   and `response.wrap_info.token`, always;
//! - the accessors (`auth.accessor`, `request.client_token_accessor`,
//!   `response.auth.accessor`, `response.wrap_info.accessor` and
//!   `wrapped_accessor`) when `hmac_accessor` is on (the default);
//! - every string *value* in `request.data` and `response.data`, at any
//!   depth (object keys are kept; numbers, booleans and null are kept), except
//!   under keys a mount lists as non-HMAC.
//!
//! Left clear, as in Vault: path, operation, mount fields, display name,
//! policies, token metadata, entity id, remote address, lease id, headers.
//! With `log_raw` nothing is hashed.

use std::fmt;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::AuditError;
use crate::event::{AuditAuth, AuditEvent};

/// The shortest salt accepted, in bytes.
pub const MIN_SALT_LEN: usize = 32;

/// A device's HMAC key. Zeroized on drop; never printed. It also keeps the
/// HMAC state keyed with it (the inner and outer pads already absorbed), so
/// each hashed field costs its own bytes only, not two more key blocks.
#[derive(Clone)]
pub struct Salt {
    bytes: Zeroizing<Vec<u8>>,
    mac: Hmac<Sha256>,
}

fn keyed(bytes: &[u8]) -> Hmac<Sha256> {
    match <Hmac<Sha256> as Mac>::new_from_slice(bytes) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

impl Salt {
    /// Use stored salt bytes (at least [`MIN_SALT_LEN`]).
    pub fn new(bytes: Vec<u8>) -> Result<Self, AuditError> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < MIN_SALT_LEN {
            return Err(AuditError::SaltTooShort {
                got: bytes.len(),
                min: MIN_SALT_LEN,
            });
        }
        let mac = keyed(&bytes);
        Ok(Salt { bytes, mac })
    }

    /// A fresh random 32-byte salt from the operating system's RNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; MIN_SALT_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let mac = keyed(&bytes);
        Salt { bytes, mac }
    }

    /// The raw bytes, for the core to store (encrypted) in its storage.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(<redacted>)")
    }
}

/// Options that decide what a device hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashOptions {
    /// Write events unhashed (Vault's `log_raw`). Off by default.
    pub log_raw: bool,
    /// Hash token accessors too (Vault's `hmac_accessor`). On by default.
    pub hmac_accessor: bool,
}

impl Default for HashOptions {
    fn default() -> Self {
        HashOptions {
            log_raw: false,
            hmac_accessor: true,
        }
    }
}

/// `hmac-sha256:<hex of HMAC-SHA256(key = salt, message = s)>`, exactly as
/// Vault's `salt.GetIdentifiedHMAC`.
pub fn hmac_sha256(salt: &Salt, s: &str) -> String {
    const PREFIX: &str = "hmac-sha256:";
    let mut mac = salt.mac.clone();
    mac.update(s.as_bytes());
    let mut hex = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex);
    let mut out = String::with_capacity(PREFIX.len() + hex.len());
    out.push_str(PREFIX);
    out.extend(hex.iter().map(|&b| char::from(b)));
    out
}

fn hash_in_place(salt: &Salt, s: &mut String) {
    *s = hmac_sha256(salt, s);
}

fn hash_nonempty(salt: &Salt, s: &mut String) {
    if !s.is_empty() {
        hash_in_place(salt, s);
    }
}

/// Replace every string value in `v` (recursively; object keys are kept)
/// with its HMAC. Strings under any object key listed in `skip_keys` (at any
/// depth, as Vault's walker does) are left clear.
pub fn hash_value(v: &mut Value, salt: &Salt, skip_keys: &[String]) {
    match v {
        Value::String(s) => hash_in_place(salt, s),
        Value::Array(items) => {
            for item in items {
                hash_value(item, salt, skip_keys);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                if skip_keys.iter().any(|s| s == k) {
                    continue;
                }
                hash_value(item, salt, skip_keys);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn hash_auth(auth: &mut AuditAuth, salt: &Salt, hmac_accessor: bool) {
    hash_nonempty(salt, &mut auth.client_token);
    if hmac_accessor {
        hash_nonempty(salt, &mut auth.accessor);
    }
}

/// Hash the secrets of `ev` in place with `salt`, unless `opts.log_raw`.
pub fn hash_event(ev: &mut AuditEvent, salt: &Salt, opts: HashOptions) {
    if opts.log_raw {
        return;
    }
    hash_auth(&mut ev.auth, salt, opts.hmac_accessor);

    let req = &mut ev.request;
    hash_nonempty(salt, &mut req.client_token);
    if opts.hmac_accessor {
        hash_nonempty(salt, &mut req.client_token_accessor);
    }
    if let Some(data) = req.data.as_mut() {
        hash_value(data, salt, &ev.non_hmac_request_keys);
    }

    if let Some(resp) = ev.response.as_mut() {
        if let Some(auth) = resp.auth.as_mut() {
            hash_auth(auth, salt, opts.hmac_accessor);
        }
        if let Some(data) = resp.data.as_mut() {
            hash_value(data, salt, &ev.non_hmac_response_keys);
        }
        if let Some(wrap) = resp.wrap_info.as_mut() {
            hash_in_place(salt, &mut wrap.token);
            if opts.hmac_accessor {
                hash_in_place(salt, &mut wrap.accessor);
                hash_nonempty(salt, &mut wrap.wrapped_accessor);
            }
        }
    }
}

/// Vault's `elide_list_responses`: in the response to a `list` request,
/// replace `data.keys` (a list) and `data.key_info` (an object) by their
/// element counts. Other events are left alone.
pub fn elide_list_response(ev: &mut AuditEvent) {
    if ev.request.operation != "list" {
        return;
    }
    let Some(Value::Object(data)) = ev.response.as_mut().and_then(|r| r.data.as_mut()) else {
        return;
    };
    if let Some(v) = data.get_mut("keys")
        && let Value::Array(a) = v
    {
        *v = Value::from(a.len());
    }
    if let Some(v) = data.get_mut("key_info")
        && let Value::Object(o) = v
    {
        *v = Value::from(o.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AuditRequest, AuditResponse, AuditWrapInfo};
    use serde_json::json;

    fn test_salt() -> Salt {
        Salt::new(b"custos-test-salt-0123456789abcdef".to_vec()).unwrap()
    }

    #[test]
    fn hmac_matches_independent_vector() {
        // python3: hmac.new(b"custos-test-salt-0123456789abcdef", b"hvs.test-token", sha256).hexdigest()
        assert_eq!(
            hmac_sha256(&test_salt(), "hvs.test-token"),
            "hmac-sha256:e0bbe3afdbec60d1bd87968bcbe8aebc462811dcf4089aab610816c93ba26954"
        );
        assert_eq!(
            hmac_sha256(&test_salt(), ""),
            "hmac-sha256:f6ae65a9ca1a7526b836adab2d76f22a9e31419624339c84531dda053d9f54c4"
        );
    }

    #[test]
    fn short_salt_rejected_and_debug_redacted() {
        assert!(matches!(
            Salt::new(vec![1; 31]),
            Err(AuditError::SaltTooShort { got: 31, min: 32 })
        ));
        let s = Salt::generate();
        assert_eq!(s.as_bytes().len(), 32);
        assert_ne!(s.as_bytes(), Salt::generate().as_bytes());
        assert_eq!(format!("{s:?}"), "Salt(<redacted>)");
    }

    fn event() -> AuditEvent {
        let mut req = AuditRequest::new("req-1", "update", "secret/data/app");
        req.client_token = "hvs.caller".into();
        req.client_token_accessor = "acc-caller".into();
        req.data = Some(json!({
            "data": {"password": "s3cr3t-value", "n": 5, "ok": true, "none": null,
                     "list": ["a", {"deep": "b"}]},
            "clear_me": "visible"
        }));
        let resp = AuditResponse {
            auth: Some(AuditAuth {
                client_token: "hvs.issued".into(),
                accessor: "acc-issued".into(),
                display_name: "approle".into(),
                ..Default::default()
            }),
            data: Some(json!({"value": "resp-secret"})),
            wrap_info: Some(AuditWrapInfo {
                token: "hvs.wrap".into(),
                accessor: "acc-wrap".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut auth = AuditAuth {
            client_token: "hvs.caller".into(),
            accessor: "acc-caller".into(),
            display_name: "token".into(),
            policies: vec!["default".into()],
            ..Default::default()
        };
        auth.metadata.insert("role".into(), "web".into());
        AuditEvent::response(Some(auth), req, resp, None)
            .with_non_hmac_keys(vec!["clear_me".into()], vec![])
    }

    #[test]
    fn hashes_what_vault_hashes() {
        let s = test_salt();
        let h = |x: &str| hmac_sha256(&s, x);
        let mut ev = event();
        hash_event(&mut ev, &s, HashOptions::default());
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["auth"]["client_token"], h("hvs.caller"));
        assert_eq!(v["auth"]["accessor"], h("acc-caller"));
        assert_eq!(v["auth"]["display_name"], "token");
        assert_eq!(v["auth"]["policies"], json!(["default"]));
        assert_eq!(v["auth"]["metadata"], json!({"role": "web"}));
        assert_eq!(v["request"]["client_token"], h("hvs.caller"));
        assert_eq!(v["request"]["client_token_accessor"], h("acc-caller"));
        assert_eq!(v["request"]["path"], "secret/data/app");
        assert_eq!(v["request"]["operation"], "update");
        let d = &v["request"]["data"];
        assert_eq!(d["data"]["password"], h("s3cr3t-value"));
        assert_eq!(d["data"]["n"], 5);
        assert_eq!(d["data"]["ok"], true);
        assert_eq!(d["data"]["none"], Value::Null);
        assert_eq!(d["data"]["list"], json!([h("a"), {"deep": h("b")}]));
        assert_eq!(d["clear_me"], "visible");
        assert_eq!(v["response"]["auth"]["client_token"], h("hvs.issued"));
        assert_eq!(v["response"]["auth"]["accessor"], h("acc-issued"));
        assert_eq!(v["response"]["auth"]["display_name"], "approle");
        assert_eq!(v["response"]["data"]["value"], h("resp-secret"));
        assert_eq!(v["response"]["wrap_info"]["token"], h("hvs.wrap"));
        assert_eq!(v["response"]["wrap_info"]["accessor"], h("acc-wrap"));
    }

    #[test]
    fn accessors_clear_without_hmac_accessor_and_raw_changes_nothing() {
        let s = test_salt();
        let mut ev = event();
        hash_event(
            &mut ev,
            &s,
            HashOptions {
                log_raw: false,
                hmac_accessor: false,
            },
        );
        assert_eq!(ev.auth.accessor, "acc-caller");
        assert_eq!(ev.request.client_token_accessor, "acc-caller");
        assert_eq!(ev.auth.client_token, hmac_sha256(&s, "hvs.caller"));

        let mut raw = event();
        hash_event(
            &mut raw,
            &s,
            HashOptions {
                log_raw: true,
                hmac_accessor: true,
            },
        );
        assert_eq!(raw, event_with_same_time(&raw));
    }

    #[test]
    fn elides_list_responses_only() {
        let resp = AuditResponse {
            data: Some(json!({"keys": ["a", "b", "c"], "key_info": {"a": {}}, "other": "x"})),
            ..Default::default()
        };
        let mut ev = AuditEvent::response(
            None,
            AuditRequest::new("r", "list", "secret/metadata/"),
            resp,
            None,
        );
        let mut read = ev.clone();
        read.request.operation = "read".into();
        elide_list_response(&mut ev);
        elide_list_response(&mut read);
        let data = ev.response.as_ref().and_then(|r| r.data.clone()).unwrap();
        assert_eq!(data, json!({"keys": 3, "key_info": 1, "other": "x"}));
        let untouched = read.response.and_then(|r| r.data).unwrap();
        assert_eq!(untouched["keys"], json!(["a", "b", "c"]));
    }

    fn event_with_same_time(like: &AuditEvent) -> AuditEvent {
        let mut e = event();
        e.time = like.time.clone();
        e
    }
}
