//! The CLI subcommands and what they share.
//!
//! Each submodule owns one command group: its clap argument types and a `run`
//! that turns parsed arguments into API calls through [`crate::client`] and
//! prints the result through [`crate::output`]. Commands return a
//! [`CmdResult`]: `Ok(exit_code)` after printing, or a [`Failure`] whose
//! message `main` prints to stderr. Exit codes follow the Vault CLI: 0 success,
//! 1 local errors (bad flags or arguments, unreadable files), 2 remote errors
//! (the server refused or could not be reached), and `status` exits 2 when
//! sealed.

pub mod audit;
pub mod audit_query;
pub mod ceremony;
pub mod drill;
pub mod kv;
pub mod operator;
pub mod policy;
pub mod raft;
pub mod rotator;
pub mod secrets;
pub mod server;
pub mod status;
pub mod token;

use crate::client::{ClientError, VaultClient};
use crate::output::{self, Format};
use serde_json::{Map, Value};
use std::io::{IsTerminal, Write};

/// Success.
pub const EXIT_OK: u8 = 0;
/// Local errors: usage, bad arguments, unreadable input.
pub const EXIT_LOCAL: u8 = 1;
/// Remote errors: the API refused or could not be reached; also "sealed".
pub const EXIT_REMOTE: u8 = 2;

/// A failed command: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// A local error (exit 1).
    pub fn local(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_LOCAL,
            message: message.into(),
        }
    }
    /// A remote error (exit 2).
    pub fn remote(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_REMOTE,
            message: message.into(),
        }
    }
    /// A remote error with Vault's `<context>: <error>` shape.
    pub fn api(context: impl std::fmt::Display, e: &ClientError) -> Failure {
        Failure::remote(format!("{context}: {e}"))
    }
}

/// What every command returns.
pub type CmdResult = Result<u8, Failure>;

/// What client commands get: the API client and the output options.
#[derive(Debug)]
pub struct Ctx {
    pub client: VaultClient,
    pub format: Format,
    pub field: Option<String>,
}

/// Write to stdout, ignoring a closed pipe (`custos kv list | head`).
pub fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.write_all(b"\n");
    let _ = o.flush();
}

/// Write to stderr.
pub fn err(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(text.as_bytes());
    let _ = e.write_all(b"\n");
}

/// Vault's `PrintRaw`: the value alone, with a newline only on a terminal
/// (so `$(custos kv get -field=x ...)` gets exactly the value).
pub fn out_raw(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    if std::io::stdout().is_terminal() {
        let _ = o.write_all(b"\n");
    }
    let _ = o.flush();
}

/// Print `-field=NAME` out of `value` (a whole envelope when `envelope`,
/// otherwise a plain map), or fail like Vault when it is not there.
pub fn print_field(ctx: &Ctx, value: &Value, field: &str, envelope: bool) -> CmdResult {
    let v = if envelope {
        output::raw_field(value, field)
    } else {
        value.get(field).filter(|v| !v.is_null()).cloned()
    };
    match v {
        Some(v) => {
            out_raw(&output::field_text(&v, ctx.format));
            Ok(EXIT_OK)
        }
        None => Err(Failure::local(format!(
            "Field \"{field}\" not present in secret"
        ))),
    }
}

/// Vault's `OutputSecret` (honouring `-field`): JSON envelope, or warnings on
/// stderr then the Key/Value table.
pub fn print_secret(ctx: &Ctx, secret: &Value) -> CmdResult {
    if let Some(f) = &ctx.field {
        return print_field(ctx, secret, f, true);
    }
    match ctx.format {
        Format::Json => out(&output::json_pretty(secret)),
        Format::Table => {
            if let Some(w) = output::warnings(secret) {
                err(&w);
            }
            let t = output::secret_table(secret);
            if !t.is_empty() {
                out(&t);
            }
        }
    }
    Ok(EXIT_OK)
}

/// Vault's `OutputData` for a plain JSON value (map → table, else JSON).
pub fn print_data(ctx: &Ctx, data: &Value) {
    match (ctx.format, data) {
        (Format::Table, Value::Object(m)) => {
            let t = output::map_table(m);
            if !t.is_empty() {
                out(&t);
            }
        }
        _ => out(&output::json_pretty(data)),
    }
}

/// Parse `k=v` flag values (`-metadata`, `-options`, `-custom-metadata`)
/// into a JSON object of strings.
pub fn parse_kv_pairs(items: &[String], flag: &str) -> Result<Map<String, Value>, Failure> {
    let mut m = Map::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                m.insert(k.to_string(), Value::String(v.to_string()));
            }
            _ => {
                return Err(Failure::local(format!(
                    "invalid value for -{flag} {item:?}: expected key=value"
                )));
            }
        }
    }
    Ok(m)
}

/// Vault's `sanitizePath`: trim spaces and surrounding slashes.
pub fn sanitize_path(s: &str) -> String {
    s.trim().trim_matches('/').to_string()
}

/// `ensureTrailingSlash`.
pub fn ensure_trailing_slash(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() || s.ends_with('/') {
        s.to_string()
    } else {
        format!("{s}/")
    }
}

/// Go's `path.Join`: join non-empty parts with `/` and clean the result
/// (no empty segments, `.` dropped, `..` resolved, no trailing slash).
pub fn path_join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    if joined.is_empty() {
        return String::new();
    }
    let rooted = joined.starts_with('/');
    let mut segs: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segs.last().is_some_and(|s| *s != "..") {
                    segs.pop();
                } else if !rooted {
                    segs.push("..");
                }
            }
            s => segs.push(s),
        }
    }
    let body = segs.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// A string field of a JSON object, or "".
pub fn str_field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_join() {
        assert_eq!(path_join(&["secret/", "data", "foo"]), "secret/data/foo");
        assert_eq!(path_join(&["secret/", "data", ""]), "secret/data");
        assert_eq!(path_join(&["a//b/", "./c", "../d"]), "a/b/d");
        assert_eq!(path_join(&["", ""]), "");
    }

    #[test]
    fn kv_pairs() {
        let m = parse_kv_pairs(&["a=1".into(), "b=x=y".into(), "c=".into()], "metadata")
            .map_err(|f| f.message)
            .unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "x=y");
        assert_eq!(m["c"], "");
        assert!(parse_kv_pairs(&["nokey".into()], "metadata").is_err());
        assert!(parse_kv_pairs(&["=v".into()], "metadata").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(sanitize_path(" /secret/foo/ "), "secret/foo");
        assert_eq!(ensure_trailing_slash("secret"), "secret/");
        assert_eq!(ensure_trailing_slash("secret/"), "secret/");
    }
}
