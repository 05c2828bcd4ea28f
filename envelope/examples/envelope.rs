//! The full envelope-encryption cycle against a running server.
//!
//! ```sh
//! custos server --dev --dev-root-token-id root &      # or an OpenBao/Vault dev server
//! VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=root bao secrets enable transit
//! VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=root \
//!     cargo run -p custos-envelope --example envelope
//! ```
//!
//! Creates a KEK (`TRANSIT_MOUNT`, default `transit`; key `envelope-demo`),
//! seals a few records, rotates the KEK, rewraps the stored DEKs without
//! touching the data, retires the old KEK version and opens everything again.

use custos_envelope::{Envelope, TransitClient};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mount = std::env::var("TRANSIT_MOUNT").unwrap_or_else(|_| "transit".into());
    let client = TransitClient::from_env(mount)?;
    let kek = "envelope-demo";
    client.create_key(kek, "aes256-gcm96").await?;
    let env = Envelope::new(client.clone(), kek);

    let plaintexts: [&[u8]; 3] = [
        b"alice: 4111-1111-1111-1111",
        b"bob: IBAN DE89 3704",
        b"carol: ssn 078-05-1120",
    ];
    let mut records = env.seal_many(&plaintexts, 4).await?;
    for r in &records {
        println!(
            "sealed    KEK v{}  {}",
            r.kek_version().unwrap_or(0),
            serde_json::to_string(r)?
        );
    }

    let latest = client.rotate(kek).await?;
    println!("rotated   KEK to v{latest}");
    let report = env.rewrap_all(&mut records).await?;
    println!(
        "rewrapped {} DEKs ({} already current, {} failed); data ciphertexts untouched",
        report.rewrapped,
        report.unchanged,
        report.failed.len()
    );
    client.set_min_decryption_version(kek, latest).await?;
    println!("retired   KEK versions below v{latest}");

    for (r, want) in env.open_many(&records).await?.into_iter().zip(plaintexts) {
        let got = r?;
        assert_eq!(got.as_slice(), want);
        println!("opened    KEK v{latest}  {}", String::from_utf8_lossy(&got));
    }
    Ok(())
}
