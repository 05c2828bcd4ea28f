//! Output formatting for the `custos` CLI: Vault's `table` layout and `json`.
//!
//! Data comes in as the JSON the server returned (`serde_json::Value`) and goes
//! out as the text the Vault CLI would print for it: `Key`/`Value` tables
//! aligned like `columnize` (four-space glue, `---` underline, empty cells as
//! `n/a`), values rendered the way Go's `%v` renders decoded JSON (`<nil>`,
//! `[a b]`, `map[k:v]`), TTL-like keys as human durations (`768h`, `1h30m`),
//! and `==== Header ====` banners sized like Vault's. Everything here is a pure
//! function returning a `String`, so the commands decide where it is printed.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// `-format=`: how command output is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

impl Format {
    /// Parse a `-format` value (or `VAULT_FORMAT`); `None` for unsupported ones.
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "table" => Some(Format::Table),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Pretty JSON with two-space indentation, like Go's `json.MarshalIndent`.
pub fn json_pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Render a JSON value the way Go's `fmt.Sprintf("%v", v)` renders the same
/// value after `encoding/json` decoding (which is what Vault's tables show).
pub fn go_value(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(go_value).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}:{}", go_value(v)))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
    }
}

/// A list of strings as Go's `%q` prints a `[]string`: `["a" "b"]`.
pub fn go_quoted_list(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Value::String(s.clone()).to_string(),
                    other => other.to_string(),
                })
                .collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Null => "[]".to_string(),
        other => go_value(other),
    }
}

/// Whether Vault would print this key's value as a duration.
pub fn looks_like_duration(k: &str) -> bool {
    k == "period"
        || k.ends_with("_period")
        || k == "ttl"
        || k.ends_with("_ttl")
        || k == "duration"
        || k.ends_with("_duration")
        || k == "lease_max"
        || k == "ttl_max"
}

/// Seconds as Vault's `humanDuration`: Go's `Duration.String()` with the
/// trailing zero units removed (`768h`, `1h30m`, `45s`, `0s`).
pub fn human_duration(secs: i64) -> String {
    if secs == 0 {
        return "0s".to_string();
    }
    let neg = secs < 0;
    let s = secs.unsigned_abs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if h > 0 {
        let _ = write!(out, "{h}h");
        if m > 0 || sec > 0 {
            let _ = write!(out, "{m}m");
        }
        if sec > 0 {
            let _ = write!(out, "{sec}s");
        }
    } else if m > 0 {
        let _ = write!(out, "{m}m");
        if sec > 0 {
            let _ = write!(out, "{sec}s");
        }
    } else {
        let _ = write!(out, "{sec}s");
    }
    out
}

/// `humanDurationInt`: numbers (or numeric strings) of seconds as durations;
/// anything else as `%v`.
pub fn human_duration_value(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => human_duration(i),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => human_duration(f as i64),
                _ => n.to_string(),
            },
        },
        Value::String(s) => match s.parse::<i64>() {
            Ok(i) => human_duration(i),
            Err(_) => s.clone(),
        },
        other => go_value(other),
    }
}

/// Format rows like `columnize` does inside Vault's `tableOutput`: the first
/// row is the header and gets a `---` underline; cells are trimmed, empty ones
/// become `n/a`; columns are padded and glued with four spaces; the last
/// column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut all: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    all.push(rows[0].clone());
    all.push(
        rows[0]
            .iter()
            .map(|h| "-".repeat(h.trim().chars().count()))
            .collect(),
    );
    all.extend(rows[1..].iter().cloned());
    columns(&all)
}

/// `columnize` without a header underline (Vault's `columnOutput`).
pub fn columns(rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| {
                    let t = c.trim();
                    if t.is_empty() {
                        "n/a".to_string()
                    } else {
                        t.to_string()
                    }
                })
                .collect()
        })
        .collect();
    let ncols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; ncols];
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut lines = Vec::with_capacity(cells.len());
    for r in &cells {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                let pad = widths[i].saturating_sub(c.chars().count());
                line.push_str(&" ".repeat(pad));
                line.push_str("    ");
            }
        }
        lines.push(line);
    }
    lines.join("\n")
}

/// A `Key`/`Value` table of a JSON object, keys sorted, TTL-like keys as
/// durations (Vault's `OutputMap`). Empty string for an empty map.
pub fn map_table(map: &Map<String, Value>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let mut rows = vec![vec!["Key".to_string(), "Value".to_string()]];
    for k in keys {
        let v = &map[k];
        let shown = if looks_like_duration(k) {
            human_duration_value(v)
        } else {
            go_value(v)
        };
        rows.push(vec![k.clone(), shown]);
    }
    table(&rows)
}

/// The warnings block Vault prints (to stderr) before a table.
pub fn warnings(secret: &Value) -> Option<String> {
    let list = secret.get("warnings")?.as_array()?;
    if list.is_empty() {
        return None;
    }
    let mut out = String::from("WARNING! The following warnings were returned from Vault:\n");
    for w in list {
        let text = match w {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = write!(out, "\n{}\n", wrap_at_length(&format!("* {text}"), 2));
    }
    Some(out)
}

/// The table of a whole response envelope (Vault's `TableFormatter.OutputSecret`):
/// lease lines, auth lines (token, accessor, duration, policies, metadata),
/// then the data keys.
pub fn secret_table(secret: &Value) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let lease_duration = secret
        .get("lease_duration")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if lease_duration > 0 {
        let lease_id = secret.get("lease_id").and_then(Value::as_str).unwrap_or("");
        if !lease_id.is_empty() {
            rows.push(vec!["lease_id".into(), lease_id.into()]);
            rows.push(vec![
                "lease_duration".into(),
                human_duration(lease_duration),
            ]);
            let renewable = secret
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            rows.push(vec!["lease_renewable".into(), renewable.to_string()]);
        } else {
            rows.push(vec![
                "refresh_interval".into(),
                human_duration(lease_duration),
            ]);
        }
    }
    if let Some(auth) = secret.get("auth").filter(|a| a.is_object()) {
        let s = |k: &str| {
            auth.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        rows.push(vec!["token".into(), s("client_token")]);
        rows.push(vec!["token_accessor".into(), s("accessor")]);
        let dur = auth
            .get("lease_duration")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        rows.push(vec![
            "token_duration".into(),
            if dur == 0 {
                "∞".into()
            } else {
                human_duration(dur)
            },
        ]);
        let renewable = auth
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        rows.push(vec!["token_renewable".into(), renewable.to_string()]);
        let null = Value::Null;
        rows.push(vec![
            "token_policies".into(),
            go_quoted_list(auth.get("token_policies").unwrap_or(&null)),
        ]);
        rows.push(vec![
            "identity_policies".into(),
            go_quoted_list(auth.get("identity_policies").unwrap_or(&null)),
        ]);
        rows.push(vec![
            "policies".into(),
            go_quoted_list(auth.get("policies").unwrap_or(&null)),
        ]);
        if let Some(meta) = auth.get("metadata").and_then(Value::as_object) {
            let mut keys: Vec<&String> = meta.keys().collect();
            keys.sort();
            for k in keys {
                rows.push(vec![format!("token_meta_{k}"), go_value(&meta[k])]);
            }
        }
    }
    if let Some(data) = secret.get("data").and_then(Value::as_object) {
        let mut keys: Vec<&String> = data.keys().collect();
        keys.sort();
        for k in keys {
            let v = &data[k];
            let shown = if looks_like_duration(k) {
                human_duration_value(v)
            } else {
                go_value(v)
            };
            rows.push(vec![k.clone(), shown]);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    rows.insert(0, vec!["Key".into(), "Value".into()]);
    table(&rows)
}

/// A sorted `Keys` list table (Vault's `OutputList`).
pub fn list_table(keys: &[String]) -> String {
    let mut sorted = keys.to_vec();
    sorted.sort();
    let mut rows = vec![vec!["Keys".to_string()]];
    rows.extend(sorted.into_iter().map(|k| vec![k]));
    table(&rows)
}

/// `padEqualSigns`: `== Header ==` padded to `total_len` characters.
pub fn pad_equal_signs(header: &str, total_len: usize) -> String {
    let mut eq = total_len as i64 - (header.len() as i64 + 2);
    if eq <= 0 {
        eq = 4;
    }
    if eq % 2 != 0 {
        eq += 1;
    }
    let side = "=".repeat((eq / 2) as usize);
    format!("{side} {header} {side}")
}

/// `getHeaderForMap`: a banner as wide as the longest key plus the glue and
/// the word `Value`.
pub fn header_for_map(header: &str, map: &Map<String, Value>) -> String {
    let max_key = map.keys().map(String::len).max().unwrap_or(0);
    pad_equal_signs(header, max_key + 4 + 5)
}

/// `outputPath`: a banner, the path and a blank line.
pub fn path_banner(title: &str, path: &str) -> String {
    format!("{}\n{}\n", pad_equal_signs(title, path.len()), path)
}

/// Wrap text at 78 columns, indenting continuation lines by `pad` spaces
/// (Vault's `wrapAtLengthWithPadding`).
pub fn wrap_at_length(text: &str, pad: usize) -> String {
    const MAX: usize = 78;
    let mut lines: Vec<String> = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split(' ') {
            let candidate_len = if line.is_empty() {
                word.len()
            } else {
                line.len() + 1 + word.len()
            };
            if candidate_len > MAX && !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                line.push_str(&" ".repeat(pad));
                line.push_str(word);
            } else {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(word);
            }
        }
        lines.push(line);
    }
    lines.join("\n")
}

/// Vault's `RawField`: the value `-field=NAME` picks from a response envelope
/// (auth and lease fields by their table names, else a data key).
pub fn raw_field(secret: &Value, field: &str) -> Option<Value> {
    let auth = secret.get("auth").filter(|a| a.is_object());
    let from_auth = |k: &str| auth.and_then(|a| a.get(k)).cloned();
    let v = match field {
        "token" if auth.is_some() => from_auth("client_token"),
        "token_accessor" if auth.is_some() => from_auth("accessor"),
        "token_duration" if auth.is_some() => from_auth("lease_duration"),
        "token_renewable" if auth.is_some() => from_auth("renewable"),
        "token_policies" if auth.is_some() => from_auth("token_policies"),
        "identity_policies" if auth.is_some() => from_auth("identity_policies"),
        "policies" if auth.is_some() => from_auth("policies"),
        "refresh_interval" | "lease_duration" => secret.get("lease_duration").cloned(),
        "lease_id" => secret.get("lease_id").cloned(),
        "lease_renewable" => secret.get("renewable").cloned(),
        _ => secret.get("data").and_then(|d| d.get(field)).cloned(),
    };
    v.filter(|v| !v.is_null())
}

/// How `-field` prints a value: `%v` in table format, JSON otherwise.
pub fn field_text(v: &Value, format: Format) -> String {
    match format {
        Format::Table => go_value(v),
        Format::Json => json_pretty(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_match_vault() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(90), "1m30s");
        assert_eq!(human_duration(3600), "1h");
        assert_eq!(human_duration(2_764_800), "768h");
        assert_eq!(human_duration(5400), "1h30m");
        assert_eq!(human_duration(3601), "1h0m1s");
        assert_eq!(human_duration_value(&json!("120")), "2m");
        assert_eq!(human_duration_value(&json!("soon")), "soon");
    }

    #[test]
    fn go_values() {
        assert_eq!(go_value(&json!(null)), "<nil>");
        assert_eq!(go_value(&json!(["a", "b"])), "[a b]");
        assert_eq!(go_value(&json!({"b": 1, "a": "x"})), "map[a:x b:1]");
        assert_eq!(
            go_quoted_list(&json!(["default", "x"])),
            r#"["default" "x"]"#
        );
    }

    #[test]
    fn table_is_columnized() {
        let m = json!({"foo": "bar", "ttl": 3600, "e": ""});
        let t = map_table(m.as_object().unwrap());
        assert_eq!(
            t,
            "Key    Value\n---    -----\ne      n/a\nfoo    bar\nttl    1h"
        );
    }

    #[test]
    fn banners() {
        assert_eq!(
            path_banner("Secret Path", "secret/data/creds"),
            "== Secret Path ==\nsecret/data/creds\n"
        );
        let m = json!({"created_time": 1, "version": 1});
        let m = m.as_object().cloned().unwrap_or_default();
        assert_eq!(header_for_map("Metadata", &m), "====== Metadata ======");
    }

    #[test]
    fn secret_table_shows_auth() {
        let s = json!({"lease_duration": 0, "auth": {"client_token": "s.x", "accessor": "acc",
            "lease_duration": 3600, "renewable": true, "policies": ["default"],
            "token_policies": ["default"]}, "data": null});
        let t = secret_table(&s);
        assert!(t.contains("token_duration       1h"), "{t}");
        assert!(t.contains("identity_policies    []"), "{t}");
        assert!(t.contains(r#"policies             ["default"]"#), "{t}");
    }

    #[test]
    fn raw_field_picks_auth_then_data() {
        let s = json!({"auth": {"client_token": "tok"}, "data": {"a": 1}});
        assert_eq!(raw_field(&s, "token"), Some(json!("tok")));
        assert_eq!(raw_field(&s, "a"), Some(json!(1)));
        assert_eq!(raw_field(&s, "missing"), None);
    }
}
