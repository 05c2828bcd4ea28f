//! TLS listeners (rustls) and config errors that name the file and key.

use std::process::Command;
use std::time::Duration;

use crate::harness::{BIN, spawn};

#[tokio::test]
async fn serves_https_when_certificates_are_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (ca, cert, key) = (d.join("ca.crt"), d.join("tls.crt"), d.join("tls.key"));
    let ext = d.join("san.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("ext");
    let p = |s: &std::path::Path| s.to_str().expect("utf8").to_string();
    // A CA, and a server certificate it signs (webpki refuses a CA as end entity).
    let steps: Vec<Vec<String>> = vec![
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=custos-test-ca",
            "-keyout",
        ]
        .into_iter()
        .map(String::from)
        .chain([p(&d.join("ca.key")), "-out".into(), p(&ca)])
        .collect(),
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ]
        .into_iter()
        .map(String::from)
        .chain([p(&key), "-out".into(), p(&d.join("tls.csr"))])
        .collect(),
        vec!["x509", "-req", "-days", "1", "-in"]
            .into_iter()
            .map(String::from)
            .chain([
                p(&d.join("tls.csr")),
                "-CA".into(),
                p(&ca),
                "-CAkey".into(),
                p(&d.join("ca.key")),
                "-CAcreateserial".into(),
                "-extfile".into(),
                p(&ext),
                "-out".into(),
                p(&cert),
            ])
            .collect(),
    ];
    for args in steps {
        let st = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl (Debian package openssl) is needed for this test");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let cfg = dir.path().join("server.hcl");
    std::fs::write(
        &cfg,
        format!(
            "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:0\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n",
            dir.path().join("raft").display(),
            cert.display(),
            key.display()
        ),
    )
    .expect("config");
    let (mut child, out) = spawn(
        &["server", "--config", cfg.to_str().expect("utf8")],
        "Listener:",
    );
    std::thread::sleep(Duration::from_millis(50));
    let text = out.lock().map(|s| s.clone()).unwrap_or_default();
    let addr = text
        .lines()
        .find_map(|l| l.split_once("Listener:").map(|(_, a)| a.trim().to_string()))
        .expect("listener line");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("ca")).expect("pem");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let r = client
        .get(format!("https://{addr}/v1/sys/seal-status"))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["initialized"], serde_json::json!(false));
    // Plain HTTP to the TLS port does not get an answer in the clear.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/v1/sys/seal-status"))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn config_mistakes_name_the_file_and_key_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "storage \"raft\" {\n  path = \"/tmp/x\"\n  node_id = \"n\"\n}\nlistener \"tcp\" {\n  adress = \"127.0.0.1:0\"\n}\n",
            "adress",
        ),
        (
            "storage \"raft\" {\n  path = \"/tmp/x\"\n  node_id = \"n\"\n}\nlistener \"tcp\" {\n  address = \"127.0.0.1:0\"\n  tls_disable = \"maybe\"\n}\n",
            "tls_disable",
        ),
        (
            "storage \"consul\" {\n}\nlistener \"tcp\" {\n  address = \"127.0.0.1:0\"\n}\n",
            "consul",
        ),
        (
            "listener \"tcp\" {\n  address = \"127.0.0.1:0\"\n  tls_disable = true\n}\n",
            "storage",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.hcl"));
        std::fs::write(&path, text).expect("write");
        let o = Command::new(BIN)
            .args(["server", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert!(!o.status.success(), "case {i} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("bad{i}.hcl")),
            "case {i}: file not named: {err}"
        );
        assert!(err.contains(key), "case {i}: key {key} not named: {err}");
    }
}
