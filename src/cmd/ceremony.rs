//! `custos operator generate-root` and `custos operator rekey`: the key
//! ceremonies of `core/src/ceremony.rs`, driven as `bao operator
//! generate-root` and `bao operator rotate-keys` drive them.
//!
//! Both talk to the authenticated endpoints OpenBao 2.7.2's CLI uses
//! (`sys/generate-root-token/*`, `sys/rotate/root/*`, and with
//! `-target=recovery` `sys/rotate/recovery/*`), so they need a token
//! (`VAULT_TOKEN`) besides the key shares. A key share comes from the
//! argument, or from stdin when the argument is `-`; the new root token is
//! printed only by `-decode`, and new key shares only when a rekey finishes.

use super::{CmdResult, Ctx, EXIT_OK, Failure, out};
use crate::output::{self, Format};
use clap::Args;
use serde_json::{Value, json};
use std::io::BufRead;

#[derive(Debug, Args)]
pub struct GenerateRootArgs {
    /// A key share (unseal key, or recovery key under an auto seal); `-` reads it from stdin
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
    /// Start a root token generation (the server draws the OTP unless -otp is given)
    #[arg(long)]
    pub init: bool,
    /// Cancel the root token generation in progress
    #[arg(long)]
    pub cancel: bool,
    /// Show the progress of the root token generation
    #[arg(long)]
    pub status: bool,
    /// Decode this encoded token with -otp and print the root token
    #[arg(long, value_name = "ENCODED")]
    pub decode: Option<String>,
    /// The one-time password, for -init or -decode
    #[arg(long, value_name = "OTP")]
    pub otp: Option<String>,
    /// Print a one-time password of the length the server expects
    #[arg(long = "generate-otp")]
    pub generate_otp: bool,
    /// The nonce of the generation in progress (needed with a KEY)
    #[arg(long, value_name = "NONCE")]
    pub nonce: Option<String>,
}

#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// A key share: a current one, or with -verify a new one; `-` reads it from stdin
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
    /// Start a rekey to -key-shares / -key-threshold
    #[arg(long)]
    pub init: bool,
    /// Number of new key shares
    #[arg(long = "key-shares", default_value_t = 5, value_name = "N")]
    pub key_shares: u32,
    /// Number of new key shares required to unseal
    #[arg(long = "key-threshold", default_value_t = 3, value_name = "T")]
    pub key_threshold: u32,
    /// With -init: the new shares take effect only after a threshold of them is entered back (-verify)
    #[arg(long = "require-verification")]
    pub require_verification: bool,
    /// Cancel the rekey in progress (with -verify: restart the verification)
    #[arg(long)]
    pub cancel: bool,
    /// Show the progress of the rekey (with -verify: of its verification)
    #[arg(long)]
    pub status: bool,
    /// Work on the verification of the new key shares
    #[arg(long)]
    pub verify: bool,
    /// The nonce of the rekey (or with -verify, of its verification)
    #[arg(long, value_name = "NONCE")]
    pub nonce: Option<String>,
    /// What to rekey: "barrier" (the unseal keys; under an auto seal, a new
    /// root key authorised by recovery keys) or "recovery" (an auto seal's
    /// recovery keys)
    #[arg(long, default_value = "barrier", value_name = "TARGET")]
    pub target: String,
}

/// The `data` of an enveloped response (or the body itself).
fn data_of(v: Option<Value>) -> Value {
    match v {
        Some(mut b) => match b.get_mut("data").map(Value::take) {
            Some(d) if d.is_object() => d,
            _ => b,
        },
        None => Value::Null,
    }
}

fn key_from(arg: &str) -> Result<String, Failure> {
    if arg != "-" {
        return Ok(arg.trim().to_string());
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::local(format!("Failed to read from stdin: {e}")))?;
    let key = line.trim().to_string();
    if key.is_empty() {
        return Err(Failure::local("Error reading key share: empty key"));
    }
    Ok(key)
}

fn table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}    {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn print_root_status(ctx: &Ctx, st: &Value) {
    if ctx.format == Format::Json {
        out(&output::json_pretty(st));
        return;
    }
    let nonce = s(st, "nonce");
    let mut rows = vec![
        (
            "Nonce",
            if nonce.is_empty() {
                "n/a".into()
            } else {
                nonce
            },
        ),
        ("Started", s(st, "started")),
        (
            "Progress",
            format!("{}/{}", s(st, "progress"), s(st, "required")),
        ),
        ("Complete", s(st, "complete")),
    ];
    let encoded = s(st, "encoded_token");
    if !encoded.is_empty() {
        rows.push(("Encoded Token", encoded));
    }
    let otp = s(st, "otp");
    if !otp.is_empty() {
        super::err(
            "A One-Time-Password has been generated for you and is shown in the OTP field. \
             You will need this value to decode the resulting root token, so keep it safe.",
        );
        rows.push(("OTP", otp));
    }
    let len = s(st, "otp_length");
    if !len.is_empty() && len != "0" {
        rows.push(("OTP Length", len));
    }
    out(&table(&rows));
}

const ATTEMPT: &str = "sys/generate-root-token/attempt";

pub async fn generate_root(ctx: &Ctx, a: GenerateRootArgs) -> CmdResult {
    let status = || async {
        ctx.client
            .read(ATTEMPT)
            .await
            .map(data_of)
            .map_err(|e| Failure::api("Error getting root generation status", &e))
    };
    if a.generate_otp {
        let len = status().await?["otp_length"].as_u64().unwrap_or(28) as usize;
        let otp = custos_core::ceremony::generate_otp(len);
        match ctx.format {
            Format::Json => out(&output::json_pretty(
                &json!({"otp": otp, "otp_length": len}),
            )),
            Format::Table => out(&otp),
        }
        return Ok(EXIT_OK);
    }
    if let Some(encoded) = a.decode {
        let otp = a
            .otp
            .filter(|o| !o.is_empty())
            .ok_or_else(|| Failure::local("Missing otp: use -otp to supply it"))?;
        let encoded = key_from(&encoded)?;
        let token = data_of(
            ctx.client
                .write(
                    "sys/decode-token",
                    &json!({"encoded_token": encoded, "otp": otp}),
                )
                .await
                .map_err(|e| Failure::api("Error decoding root token", &e))?,
        );
        let token = s(&token, "token");
        match ctx.format {
            Format::Json => out(&output::json_pretty(&json!({ "token": token }))),
            Format::Table => out(&token),
        }
        return Ok(EXIT_OK);
    }
    if a.cancel {
        ctx.client
            .delete(ATTEMPT)
            .await
            .map_err(|e| Failure::api("Error canceling root token generation", &e))?;
        out("Success! Root token generation canceled (if it was started)");
        return Ok(EXIT_OK);
    }
    if a.init {
        let body = json!({"otp": a.otp.unwrap_or_default(), "pgp_key": ""});
        let st = data_of(
            ctx.client
                .write(ATTEMPT, &body)
                .await
                .map_err(|e| Failure::api("Error initializing root generation", &e))?,
        );
        print_root_status(ctx, &st);
        return Ok(EXIT_OK);
    }
    if a.status {
        print_root_status(ctx, &status().await?);
        return Ok(EXIT_OK);
    }
    let Some(key) = a.key else {
        return Err(Failure::local(
            "Missing key share: give it as the argument (or `-` to read it from stdin)",
        ));
    };
    let st = status().await?;
    if st["started"] != json!(true) {
        return Err(Failure::local(
            "No root generation is in progress. Start a root generation by running \
             \"custos operator generate-root -init\".",
        ));
    }
    let nonce = a
        .nonce
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::local("Missing nonce value: specify it via the -nonce flag"))?;
    let key = key_from(&key)?;
    let st = data_of(
        ctx.client
            .write(
                "sys/generate-root-token/update",
                &json!({"key": key, "nonce": nonce}),
            )
            .await
            .map_err(|e| Failure::api("Error posting unseal key", &e))?,
    );
    print_root_status(ctx, &st);
    Ok(EXIT_OK)
}

const ROTATE: &str = "sys/rotate/root";
const ROTATE_RECOVERY: &str = "sys/rotate/recovery";

fn print_rekey_status(ctx: &Ctx, st: &Value, verify: bool) {
    if ctx.format == Format::Json {
        out(&output::json_pretty(st));
        return;
    }
    let nonce = s(st, "nonce");
    let mut rows = vec![(
        if verify {
            "Verification Nonce"
        } else {
            "Nonce"
        },
        if nonce.is_empty() {
            "n/a".into()
        } else {
            nonce
        },
    )];
    rows.push(("Started", s(st, "started")));
    if st["started"] == json!(true) {
        if verify {
            rows.push((
                "Verification Progress",
                format!("{}/{}", s(st, "progress"), s(st, "t")),
            ));
        } else {
            rows.push((
                "Progress",
                format!("{}/{}", s(st, "progress"), s(st, "required")),
            ));
            rows.push(("Verification Required", s(st, "verification_required")));
        }
        rows.push(("New Shares", s(st, "n")));
        rows.push(("New Threshold", s(st, "t")));
    }
    out(&table(&rows));
}

fn print_new_keys(ctx: &Ctx, done: &Value) {
    if ctx.format == Format::Json {
        out(&output::json_pretty(done));
        return;
    }
    let keys: Vec<String> = done["keys_base64"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if keys.is_empty() {
        // The barrier key under an auto seal: a new root key, no shares.
        out(&format!(
            "Success! Root key rotated through the auto seal (operation nonce: {}). \
             The recovery keys are unchanged.",
            s(done, "nonce")
        ));
        return;
    }
    let mut text = String::new();
    for (i, k) in keys.iter().enumerate() {
        text.push_str(&format!("Key {}: {k}\n", i + 1));
    }
    text.push_str(&format!("\nOperation nonce: {}\n", s(done, "nonce")));
    let vnonce = s(done, "verification_nonce");
    if vnonce.is_empty() {
        text.push_str(&format!(
            "\nCustos rekeyed with {} key shares. The old key shares no longer work. \
             Please securely distribute the key shares printed above. When Custos is \
             re-sealed, restarted, or stopped, you must supply enough of these keys to \
             unseal it before it can start servicing requests.",
            keys.len()
        ));
    } else {
        text.push_str(&format!(
            "\nThe new key shares do not work yet: enter a threshold of them with \
             \"custos operator rekey -verify -nonce={vnonce} KEY\" to make them the \
             unseal keys. Until then the old key shares stay valid."
        ));
    }
    out(&text);
}

pub async fn rekey(ctx: &Ctx, a: RekeyArgs) -> CmdResult {
    let rotate = match a.target.as_str() {
        "barrier" => ROTATE,
        "recovery" | "hsm" => ROTATE_RECOVERY,
        other => return Err(Failure::local(format!("Unknown target: {other}"))),
    };
    let sub = if a.verify { "verify" } else { "init" };
    let path = format!("{rotate}/{sub}");
    if a.init {
        // `-init -verify` asks for verification too, as `bao operator
        // rotate-keys -init -verify` does.
        let body = json!({
            "secret_shares": a.key_shares,
            "secret_threshold": a.key_threshold,
            "require_verification": a.require_verification || a.verify,
        });
        let st = data_of(
            ctx.client
                .write(&format!("{rotate}/init"), &body)
                .await
                .map_err(|e| Failure::api("Error initializing rekey", &e))?,
        );
        if st["complete"] == json!(true) {
            // Recovery keys where there were none: issued at once.
            print_new_keys(ctx, &st);
            return Ok(EXIT_OK);
        }
        print_rekey_status(ctx, &st, false);
        return Ok(EXIT_OK);
    }
    if a.cancel {
        ctx.client
            .delete(&path)
            .await
            .map_err(|e| Failure::api("Error canceling rekey", &e))?;
        out(if a.verify {
            "Success! Rekey verification canceled (if it was started): it starts over under a new nonce"
        } else {
            "Success! Canceled rekeying (if it was started)"
        });
        return Ok(EXIT_OK);
    }
    let status = || async {
        ctx.client
            .read(&path)
            .await
            .map(data_of)
            .map_err(|e| Failure::api("Error getting rekey status", &e))
    };
    if a.status {
        print_rekey_status(ctx, &status().await?, a.verify);
        return Ok(EXIT_OK);
    }
    let Some(key) = a.key else {
        return Err(Failure::local(
            "Missing key share: give it as the argument (or `-` to read it from stdin)",
        ));
    };
    let nonce = a
        .nonce
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::local("Missing nonce value: specify it via the -nonce flag"))?;
    let key = key_from(&key)?;
    let update = if a.verify {
        format!("{rotate}/verify")
    } else {
        format!("{rotate}/update")
    };
    let resp = data_of(
        ctx.client
            .write(&update, &json!({"key": key, "nonce": nonce}))
            .await
            .map_err(|e| Failure::api("Error posting unseal key", &e))?,
    );
    if resp["complete"] != json!(true) {
        print_rekey_status(ctx, &resp, a.verify);
    } else if a.verify {
        out(
            "Success! Rekey verification successful. The rekey is complete and the new key shares are now active.",
        );
    } else {
        print_new_keys(ctx, &resp);
    }
    Ok(EXIT_OK)
}
