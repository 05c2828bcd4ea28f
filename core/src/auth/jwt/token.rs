//! One JWT, from the compact string a client sends to a verified claim set:
//! bounded parsing, the `alg` allow-list (no `none`, no HMAC — so a token
//! "signed" with the public key as an HMAC secret is refused), and after the
//! signature checked out (against [`super::keys::KeySet`]) the registered
//! claims as hashicorp/cap's `Validator.Validate` checks them: `iss`, `sub`,
//! `aud`, and `nbf`/`exp`/`iat` with the role's leeways.
//!
//! The token itself never leaves this module in an error or a log line;
//! errors carry only Vault's wording.

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// base64url as Go's `RawURLEncoding` decodes it (go-jose's): padding
/// optional, non-zero trailing bits ignored — so a truncated signature is a
/// signature that does not verify, as in Vault, not a decoding error.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Tokens longer than this are refused before any decoding. GitLab and
/// GitHub id tokens are 1–2 KiB, Kubernetes' under 2 KiB; Azure AD tokens
/// with many groups reach a few KiB.
pub const MAX_JWT_BYTES: usize = 64 * 1024;

/// The algorithms Vault accepts (`consts.AllowedJWTSignatureAlgorithmsBao`):
/// asymmetric only.
pub const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA",
];

/// cap's `DefaultLeewaySeconds` (nbf/exp leeways left at 0).
const DEFAULT_LEEWAY: i64 = 150;
/// go-jose's `jwt.DefaultLeeway` (clock skew left at 0).
const DEFAULT_SKEW: i64 = 60;

/// Why a token was refused. Rendered with Vault's prefixes by
/// [`TokenError::message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Could not be parsed, or no key verified the signature, or the keys
    /// could not be fetched: `error verifying token signature: ...`.
    Signature(String),
    /// Verified, but the claims or header are not as expected.
    Claims(String),
}

impl TokenError {
    pub fn message(&self) -> String {
        match self {
            TokenError::Signature(m) => {
                format!("error validating token: error verifying token signature: {m}")
            }
            TokenError::Claims(m) => format!("error validating token: {m}"),
        }
    }

    pub(crate) fn malformed(m: impl std::fmt::Display) -> Self {
        TokenError::Signature(format!("malformed jwt: {m}"))
    }
}

/// A parsed, not yet verified token.
pub struct Parsed<'a> {
    pub alg: Algorithm,
    pub alg_name: String,
    pub kid: Option<String>,
    /// `header.payload`, what the signature covers.
    pub signing_input: &'a str,
    /// The signature, decoded.
    pub signature: Vec<u8>,
    pub claims: Map<String, Value>,
}

/// Split and decode a compact JWS. Refuses anything but three parts, an
/// algorithm outside [`ALLOWED_ALGS`] (or one this server cannot verify),
/// and a payload that is not a JSON object.
pub fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(TokenError::malformed(format!(
            "token is larger than {MAX_JWT_BYTES} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::malformed(
            "compact JWS format must have three parts",
        ));
    };
    let header: Map<String, Value> = decode_json(h, "header")?;
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(TokenError::malformed("missing or invalid \"alg\" header")),
    };
    if !ALLOWED_ALGS.contains(&alg_name.as_str()) {
        return Err(TokenError::malformed(format!(
            "unexpected signature algorithm {alg_name:?}; expected {ALLOWED_ALGS:?}"
        )));
    }
    let alg: Algorithm = alg_name.parse().map_err(|_| {
        TokenError::Signature(format!(
            "signature algorithm {alg_name:?} is not supported by this server"
        ))
    })?;
    let kid = match header.get("kid") {
        Some(Value::String(k)) => Some(k.clone()),
        _ => None,
    };
    if s.is_empty() {
        return Err(TokenError::malformed("token must be signed"));
    }
    let signature = B64URL
        .decode(s)
        .map_err(|e| TokenError::malformed(format!("illegal base64 data in signature: {e}")))?;
    let claims: Map<String, Value> = decode_json(p, "payload")?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Parsed {
        alg,
        alg_name,
        kid,
        signing_input,
        signature,
        claims,
    })
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|e| TokenError::malformed(format!("illegal base64 data in {what}: {e}")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TokenError::malformed(format!(
            "{what} is not a JSON object"
        ))),
        Err(_) => Err(TokenError::malformed(format!("{what} is not valid JSON"))),
    }
}

/// What the claims must say (cap's `jwt.Expected`). Leeways in seconds:
/// 0 means the default, negative means none.
#[derive(Debug, Clone, Default)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub audiences: &'a [String],
    /// The config's `jwt_supported_algs`; empty = every allowed algorithm.
    pub algorithms: &'a [String],
    pub not_before_leeway: i64,
    pub expiration_leeway: i64,
    pub clock_skew_leeway: i64,
    /// Unix seconds.
    pub now: i64,
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<i64, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => Ok(n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f.trunc() as i64))
            .unwrap_or(0)),
        Some(_) => Err(TokenError::Claims(format!(
            "invalid {name} claim: not a numeric date"
        ))),
    }
}

fn string_claim<'c>(claims: &'c Map<String, Value>, name: &str) -> Result<&'c str, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TokenError::Claims(format!(
            "invalid {name} claim: not a string"
        ))),
    }
}

/// The `aud` claim as a list (a single string is a list of one).
pub fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, TokenError> {
    match claims.get("aud") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().ok_or_else(|| {
                    TokenError::Claims("invalid aud claim: not a string list".into())
                })
            })
            .collect(),
        Some(_) => Err(TokenError::Claims(
            "invalid aud claim: not a string list".into(),
        )),
    }
}

/// cap's claim checks, in its order, after the signature was verified.
pub fn validate_claims(p: &Parsed<'_>, e: &Expected<'_>) -> Result<(), TokenError> {
    let refused = !e.algorithms.is_empty() && !e.algorithms.contains(&p.alg_name);
    if refused {
        return Err(TokenError::Claims(
            "invalid algorithm (alg) header parameter: token signed with unexpected algorithm"
                .into(),
        ));
    }
    let c = &p.claims;
    if !e.issuer.is_empty() && string_claim(c, "iss")? != e.issuer {
        return Err(TokenError::Claims("invalid issuer (iss) claim".into()));
    }
    if !e.subject.is_empty() && string_claim(c, "sub")? != e.subject {
        return Err(TokenError::Claims("invalid subject (sub) claim".into()));
    }
    let aud = audiences(c)?;
    if !e.audiences.is_empty() && !e.audiences.iter().any(|want| aud.contains(&want.as_str())) {
        return Err(TokenError::Claims(
            "invalid audience (aud) claim: audience claim does not match any expected audience"
                .into(),
        ));
    }
    let iat = numeric_date(c, "iat")?;
    let mut exp = numeric_date(c, "exp")?;
    let mut nbf = numeric_date(c, "nbf")?;
    if iat == 0 && exp == 0 && nbf == 0 {
        return Err(TokenError::Claims(
            "no issued at (iat), not before (nbf), or expiration time (exp) claims in token".into(),
        ));
    }
    let leeway = |l: i64| match l {
        l if l < 0 => 0,
        0 => DEFAULT_LEEWAY,
        l => l,
    };
    if exp == 0 {
        exp = iat.max(nbf).saturating_add(leeway(e.expiration_leeway));
    }
    if nbf == 0 {
        nbf = if iat != 0 {
            iat
        } else {
            exp.saturating_sub(leeway(e.not_before_leeway))
        };
    }
    let skew = match e.clock_skew_leeway {
        l if l < 0 => 0,
        0 => DEFAULT_SKEW,
        l => l,
    };
    if e.now.saturating_add(skew) < nbf {
        return Err(TokenError::Claims(
            "invalid not before (nbf) claim: token not yet valid".into(),
        ));
    }
    if e.now.saturating_sub(skew) > exp {
        return Err(TokenError::Claims(
            "invalid expiration time (exp) claim: token is expired".into(),
        ));
    }
    if iat != 0 && e.now.saturating_add(skew) < iat {
        return Err(TokenError::Claims(
            "invalid issued at (iat) claim: token issued in the future".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    fn token(header: Value, claims: Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn check(claims: Value, e: Expected<'_>) -> Result<(), TokenError> {
        let t = token(json!({"alg": "RS256"}), claims);
        let p = parse(&t)?;
        validate_claims(&p, &e)
    }

    #[test]
    fn parse_refuses_malformed_none_and_hmac() {
        for (t, want) in [
            ("garbage".to_string(), "three parts"),
            ("a.b".to_string(), "three parts"),
            ("a.b.c.d".to_string(), "three parts"),
            ("!!.e30.c2ln".to_string(), "illegal base64"),
            (
                token(json!({"alg": "none"}), json!({})),
                "unexpected signature algorithm \"none\"",
            ),
            (
                token(json!({"alg": "HS256"}), json!({})),
                "unexpected signature algorithm \"HS256\"",
            ),
            (token(json!({"typ": "JWT"}), json!({})), "alg"),
            (
                token(json!({"alg": "RS256"}), json!([1])),
                "not a JSON object",
            ),
            (
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode("{\"alg\":\"RS256\"}"),
                    URL_SAFE_NO_PAD.encode("{}")
                ),
                "must be signed",
            ),
            ("a".repeat(MAX_JWT_BYTES + 1), "larger than"),
        ] {
            let e = parse(&t).err().map(|e| e.message()).unwrap_or_default();
            assert!(e.contains(want), "{want}: {e}");
            assert!(
                e.starts_with("error validating token: error verifying token signature: "),
                "{e}"
            );
        }
        let t = token(json!({"alg": "ES256", "kid": "k1"}), json!({"sub": "x"}));
        let p = parse(&t).unwrap();
        assert_eq!((p.alg, p.kid.as_deref()), (Algorithm::ES256, Some("k1")));
    }

    #[test]
    fn claims_follow_cap() {
        let now = 1_000_000;
        let aud = vec!["ci".to_string()];
        let base = || Expected {
            now,
            ..Default::default()
        };
        assert!(check(json!({"iat": now, "exp": now + 60}), base()).is_ok());
        let err = |r: Result<(), TokenError>| r.unwrap_err().message();
        assert!(err(check(json!({"sub": "x"}), base())).contains("no issued at (iat)"));
        // Expired beyond the default 60 s skew, but not within it.
        assert!(err(check(json!({"exp": now - 61}), base())).contains("token is expired"));
        assert!(check(json!({"exp": now - 59}), base()).is_ok());
        let no_skew = Expected {
            clock_skew_leeway: -1,
            ..base()
        };
        assert!(check(json!({"exp": now - 1}), no_skew.clone()).is_err());
        assert!(err(check(json!({"nbf": now + 100}), base())).contains("not yet valid"));
        // Only iat in the future: nbf is taken from it.
        assert!(err(check(json!({"iat": now + 100}), base())).contains("not yet valid"));
        // Only iat, long ago: exp = iat + 150 s.
        assert!(err(check(json!({"iat": now - 300}), base())).contains("expired"));
        let long = Expected {
            expiration_leeway: 600,
            ..base()
        };
        assert!(check(json!({"iat": now - 300}), long).is_ok());
        let e = Expected {
            issuer: "https://gitlab.example.com",
            ..base()
        };
        assert_eq!(
            err(check(json!({"iat": now, "iss": "https://evil"}), e)),
            "error validating token: invalid issuer (iss) claim"
        );
        let e = Expected {
            audiences: &aud,
            ..base()
        };
        assert!(check(json!({"iat": now, "aud": ["x", "ci"]}), e.clone()).is_ok());
        assert!(check(json!({"iat": now, "aud": "ci"}), e.clone()).is_ok());
        assert!(err(check(json!({"iat": now}), e.clone())).contains("invalid audience"));
        assert!(err(check(json!({"iat": now, "aud": 5}), e)).contains("aud"));
        let e = Expected {
            subject: "repo:org/repo:ref:refs/heads/main",
            ..base()
        };
        assert!(
            err(check(
                json!({"iat": now, "sub": "repo:org/repo:ref:refs/heads/dev"}),
                e
            ))
            .contains("subject")
        );
        let algs = vec!["ES256".to_string()];
        let e = Expected {
            algorithms: &algs,
            ..base()
        };
        assert!(err(check(json!({"iat": now}), e)).contains("unexpected algorithm"));
        assert!(err(check(json!({"iat": "yesterday"}), base())).contains("numeric date"));
    }
}
