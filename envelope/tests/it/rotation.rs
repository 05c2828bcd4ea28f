//! The acceptance test: 10 000 records under KEK v1, rotate to v2,
//! rewrap every DEK, retire v1 with `min_decryption_version = 2`: every record
//! still decrypts, its data ciphertext unchanged, and a v1-wrapped DEK no
//! longer unwraps.

use custos_envelope::{Envelope, EnvelopeError, SealedRecord};

use crate::harness::Server;

const RECORDS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_with_rewrap_keeps_every_record_readable() {
    let s = Server::start().await;
    let client = s.client();
    client
        .create_key("kek", "aes256-gcm96")
        .await
        .expect("create KEK");
    let env = Envelope::new(client.clone(), "kek");

    let data: Vec<Vec<u8>> = (0..RECORDS)
        .map(|i| format!("record {i}: customer data that never leaves the app").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let mut records = env.seal_many(&refs, 32).await.expect("seal 10k records");
    assert!(records.iter().all(|r| r.kek_version() == Some(1)));
    let before: Vec<SealedRecord> = records.clone();

    assert_eq!(client.rotate("kek").await.expect("rotate"), 2);
    let report = env.rewrap_all(&mut records).await.expect("rewrap");
    assert_eq!(report.rewrapped, RECORDS, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    for (old, new) in before.iter().zip(&records) {
        assert_eq!(new.kek_version(), Some(2));
        assert_ne!(old.wrapped_dek, new.wrapped_dek);
        // The data itself was not re-encrypted.
        assert_eq!((&old.nonce, &old.ciphertext), (&new.nonce, &new.ciphertext));
    }

    client
        .set_min_decryption_version("kek", 2)
        .await
        .expect("retire v1");

    let opened = env.open_many(&records).await.expect("open 10k records");
    assert_eq!(opened.len(), RECORDS);
    for (i, (got, want)) in opened.into_iter().zip(&data).enumerate() {
        let got = got.unwrap_or_else(|e| panic!("record {i} does not open: {e}"));
        assert_eq!(got.as_slice(), want.as_slice(), "record {i}");
    }
    // One at a time too.
    assert_eq!(
        env.open(&records[42]).await.expect("open one").as_slice(),
        data[42].as_slice()
    );

    // A DEK still wrapped by v1 no longer unwraps.
    match env.open(&before[0]).await {
        Err(EnvelopeError::Transit { status, errors, .. }) => {
            assert_eq!(status, 400);
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("disallowed by policy (too old)")),
                "{errors:?}"
            );
        }
        other => panic!(
            "a v1-wrapped DEK must be refused, got {:?}",
            other.map(|_| "plaintext")
        ),
    }
    // A tampered record is refused locally.
    let mut bad = records[1].clone();
    bad.ciphertext = records[2].ciphertext.clone();
    assert!(matches!(
        env.open(&bad).await,
        Err(EnvelopeError::Crypto(_))
    ));
    s.stop().await;
}
