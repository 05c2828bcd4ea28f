//! Claims after the signature checked out: looking a claim up (by name or
//! JSON pointer), the role's `bound_claims` (exact or `glob`),
//! `claim_mappings` into alias metadata, the user claim and the groups
//! claim — Vault's `claims.go` and `createIdentity`, with its wording.
//!
//! Input is the verified claim set ([`super::token::Verified`]) and the role
//! ([`super::role::JwtRole`]); the output feeds the
//! [`crate::logical::LoginAuth`] that `login` answers with. Nothing here
//! logs: claim values may be personal data.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One claim or bound value, normalised as Vault compares them: strings,
/// booleans and numbers (a claim's number by its integer part, as Vault
/// turns float claims into `json.Number(strconv.Itoa(int(v)))`).
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Str(String),
    Bool(bool),
    Num(String),
    /// Anything else inside a list: never equal to a bound value.
    Other,
}

/// A claim by name, or by JSON pointer when it starts with `/` (Vault's
/// `getClaim`). An `aud` string is seen as a one-element list.
pub fn get_claim<'a>(claims: &'a Map<String, Value>, claim: &str) -> Option<ClaimRef<'a>> {
    let v = if claim.starts_with('/') {
        pointer(claims, claim)?
    } else {
        claims.get(claim)?
    };
    if v.is_null() {
        return None;
    }
    if claim == "aud"
        && let Value::String(s) = v
    {
        return Some(ClaimRef::WrappedStr(s));
    }
    Some(ClaimRef::Value(v))
}

/// A JSON pointer (RFC 6901) into the claims object.
fn pointer<'a>(claims: &'a Map<String, Value>, ptr: &str) -> Option<&'a Value> {
    let mut parts = ptr.split('/').skip(1);
    let first = unescape(parts.next()?);
    let mut cur = claims.get(first.as_str())?;
    for p in parts {
        let p = unescape(p);
        cur = match cur {
            Value::Object(m) => m.get(p.as_str())?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

/// A looked-up claim value.
#[derive(Debug, Clone, Copy)]
pub enum ClaimRef<'a> {
    Value(&'a Value),
    /// `aud` given as a single string.
    WrappedStr(&'a str),
}

impl<'a> ClaimRef<'a> {
    /// The value as a string, if it is one (an `aud` list is not).
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            ClaimRef::Value(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Vault's `normalizeList`: a string, bool or number becomes a list of
    /// one; a list stays; anything else (an object) is `None`.
    fn normalize(self) -> Option<Vec<Scalar>> {
        match self {
            ClaimRef::WrappedStr(s) => Some(vec![Scalar::Str(s.to_string())]),
            ClaimRef::Value(Value::Array(a)) => Some(a.iter().map(claim_scalar).collect()),
            ClaimRef::Value(v @ (Value::String(_) | Value::Bool(_) | Value::Number(_))) => {
                Some(vec![claim_scalar(v)])
            }
            ClaimRef::Value(_) => None,
        }
    }

    fn shown(self) -> String {
        match self {
            ClaimRef::WrappedStr(s) => format!("[{s}]"),
            ClaimRef::Value(v) => show(v),
        }
    }
}

fn claim_scalar(v: &Value) -> Scalar {
    match v {
        Value::String(s) => Scalar::Str(s.clone()),
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Number(n) => Scalar::Num(match n.as_i64() {
            Some(i) => i.to_string(),
            None => (n.as_f64().unwrap_or(0.0).trunc() as i64).to_string(),
        }),
        _ => Scalar::Other,
    }
}

fn bound_scalar(v: &Value) -> Scalar {
    match v {
        Value::String(s) => Scalar::Str(s.clone()),
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Number(n) => Scalar::Num(n.to_string()),
        _ => Scalar::Other,
    }
}

/// Bound values as a list (Vault's `normalizeList` on the role's side).
pub fn bound_values(v: &Value) -> Option<Vec<&Value>> {
    match v {
        Value::Array(a) => Some(a.iter().collect()),
        Value::String(_) | Value::Bool(_) | Value::Number(_) => Some(vec![v]),
        _ => None,
    }
}

/// A value the way Go's `%v` would roughly print it, for error messages
/// about bound (operator-written) values.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(" ")),
        Value::Object(_) => "map[...]".to_string(),
        other => other.to_string(),
    }
}

/// ryanuber/go-glob: `*` matches any run of characters, nothing else is
/// special.
pub fn glob(pattern: &str, subject: &str) -> bool {
    if pattern.is_empty() {
        return subject.is_empty();
    }
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return subject == pattern;
    }
    let leading = pattern.starts_with('*');
    let trailing = pattern.ends_with('*');
    let end = parts.len() - 1;
    let mut subj = subject;
    for (i, part) in parts[..end].iter().enumerate() {
        let Some(idx) = subj.find(part) else {
            return false;
        };
        if i == 0 && !leading && idx != 0 {
            return false;
        }
        subj = &subj[idx + part.len()..];
    }
    trailing || subj.ends_with(parts[end])
}

/// Vault's `validateBoundClaims`: every bound claim must be present and
/// one of its values must match one of the claim's values. The message is
/// Vault's, without the `error validating claims: ` prefix.
pub fn validate_bound_claims(
    use_globs: bool,
    bound: &Map<String, Value>,
    claims: &Map<String, Value>,
) -> Result<(), String> {
    for (claim, expected) in bound {
        let Some(actual) = get_claim(claims, claim) else {
            return Err(format!("claim {claim:?} is missing"));
        };
        let Some(actual_vals) = actual.normalize() else {
            return Err(format!(
                "received claim is not a string, bool, int or list: {}",
                actual.shown()
            ));
        };
        let Some(expected_vals) = bound_values(expected) else {
            return Err(format!(
                "bound claim is not a string, bool, int or list: {}",
                show(expected)
            ));
        };
        let mut found = false;
        'outer: for e in &expected_vals {
            for a in &actual_vals {
                if use_globs {
                    let Value::String(pattern) = e else {
                        return Err(format!("received claim is not a glob string: {}", show(e)));
                    };
                    if let Scalar::Str(s) = a
                        && glob(pattern, s)
                    {
                        found = true;
                        break 'outer;
                    }
                } else if bound_scalar(e) == *a && *a != Scalar::Other {
                    found = true;
                    break 'outer;
                }
            }
        }
        if !found {
            return Err(format!(
                "claim {claim:?} does not match any associated bound claim values"
            ));
        }
    }
    Ok(())
}

/// Vault's `extractMetadata`: each mapped claim that is present must be a
/// string and lands under its metadata key.
pub fn extract_metadata(
    claims: &Map<String, Value>,
    mappings: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (source, target) in mappings {
        if let Some(v) = get_claim(claims, source) {
            let Some(s) = v.as_str() else {
                return Err(format!("error converting claim '{source}' to string"));
            };
            out.insert(target.clone(), s.to_string());
        }
    }
    Ok(out)
}

/// The alias name: the user claim, by name or (with
/// `user_claim_json_pointer`) by pointer; it must be a string.
pub fn user_name(
    claims: &Map<String, Value>,
    user_claim: &str,
    json_pointer: bool,
) -> Result<String, String> {
    let raw = if json_pointer {
        get_claim(claims, user_claim)
    } else {
        claims
            .get(user_claim)
            .filter(|v| !v.is_null())
            .map(ClaimRef::Value)
    };
    let Some(raw) = raw else {
        return Err(format!("claim {user_claim:?} not found in token"));
    };
    raw.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("claim {user_claim:?} could not be converted to string"))
}

/// The group alias names from `groups_claim` (empty names skipped).
pub fn groups(claims: &Map<String, Value>, groups_claim: &str) -> Result<Vec<String>, String> {
    let Some(raw) = get_claim(claims, groups_claim) else {
        return Err(format!(
            "failed to fetch groups: {groups_claim:?} claim not found in token"
        ));
    };
    let items: Vec<&Value> = match raw {
        ClaimRef::WrappedStr(s) => {
            return Ok(Some(s.to_string())
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect());
        }
        ClaimRef::Value(Value::Array(a)) => a.iter().collect(),
        ClaimRef::Value(v @ (Value::String(_) | Value::Bool(_) | Value::Number(_))) => vec![v],
        ClaimRef::Value(_) => {
            return Err(format!(
                "{groups_claim:?} claim could not be converted to string list"
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err(format!(
                "value {} in groups claim could not be parsed as string",
                show(item)
            ));
        };
        if !s.is_empty() {
            out.push(s.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn globs_follow_go_glob() {
        assert!(glob("org/*", "org/repo"));
        assert!(glob("refs/tags/v*", "refs/tags/v1.2"));
        assert!(!glob("refs/tags/v*", "refs/heads/v1"));
        assert!(glob("*-prod", "eu-prod"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b*c", "a-x-c-y-b"));
        assert!(glob("*", ""));
        assert!(!glob("", "x"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn bound_claims_exact_lists_and_types() {
        let c = claims(json!({
            "project_path": "group/proj", "ref_protected": "true", "protected": true,
            "groups": ["devs", "ops"], "n": 42, "nested": {"env": "prod"}
        }));
        let ok = |b: Value, globs: bool| validate_bound_claims(globs, b.as_object().unwrap(), &c);
        assert!(ok(json!({"project_path": "group/proj"}), false).is_ok());
        assert!(ok(json!({"project_path": ["x", "group/proj"]}), false).is_ok());
        assert!(ok(json!({"groups": "ops"}), false).is_ok());
        assert!(ok(json!({"protected": true}), false).is_ok());
        assert!(ok(json!({"n": 42}), false).is_ok());
        assert!(ok(json!({"/nested/env": "prod"}), false).is_ok());
        // "true" (string) is not true (bool), as in Vault.
        let e = ok(json!({"protected": "true"}), false).unwrap_err();
        assert_eq!(
            e,
            "claim \"protected\" does not match any associated bound claim values"
        );
        assert_eq!(
            ok(json!({"missing": "x"}), false).unwrap_err(),
            "claim \"missing\" is missing"
        );
        assert!(
            ok(json!({"nested": "x"}), false)
                .unwrap_err()
                .starts_with("received claim is not")
        );
        assert!(ok(json!({"project_path": "group/*"}), true).is_ok());
        assert!(ok(json!({"project_path": "group/*"}), false).is_err());
        assert!(ok(json!({"groups": ["adm*", "op*"]}), true).is_ok());
        assert!(ok(json!({"project_path": "other/*"}), true).is_err());
    }

    #[test]
    fn user_metadata_and_groups() {
        let c = claims(json!({
            "sub": "repo:org/repo:ref:refs/heads/main", "user_login": "alice", "num": 5,
            "ref": "main", "groups": ["a", "", "b"], "one": "solo", "bad": [1], "obj": {"k": "v"}
        }));
        assert_eq!(user_name(&c, "user_login", false).unwrap(), "alice");
        assert_eq!(user_name(&c, "/obj/k", true).unwrap(), "v");
        assert_eq!(
            user_name(&c, "nope", false).unwrap_err(),
            "claim \"nope\" not found in token"
        );
        assert_eq!(
            user_name(&c, "num", false).unwrap_err(),
            "claim \"num\" could not be converted to string"
        );
        let m = BTreeMap::from([("ref".to_string(), "git_ref".to_string())]);
        assert_eq!(extract_metadata(&c, &m).unwrap()["git_ref"], "main");
        let m = BTreeMap::from([("num".to_string(), "n".to_string())]);
        assert_eq!(
            extract_metadata(&c, &m).unwrap_err(),
            "error converting claim 'num' to string"
        );
        assert_eq!(groups(&c, "groups").unwrap(), vec!["a", "b"]);
        assert_eq!(groups(&c, "one").unwrap(), vec!["solo"]);
        assert!(
            groups(&c, "bad")
                .unwrap_err()
                .contains("could not be parsed as string")
        );
        assert!(groups(&c, "obj").unwrap_err().contains("string list"));
        assert!(
            groups(&c, "none")
                .unwrap_err()
                .contains("not found in token")
        );
    }
}
