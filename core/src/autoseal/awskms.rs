//! `seal "awskms"`: the root key is encrypted and decrypted by an AWS KMS
//! key through `aws-sdk-kms` (HTTP on hyper + rustls with ring, as the
//! snapshot shipper's S3 client; no aws-lc, no OpenSSL).
//!
//! Settings come from the stanza, with Vault's fallbacks: `kms_key_id` from
//! `VAULT_AWSKMS_SEAL_KEY_ID` or `AWS_KMS_KEY_ID`; `region` from `AWS_REGION`
//! / `AWS_DEFAULT_REGION`, else `us-east-1`; `endpoint` from
//! `AWS_KMS_ENDPOINT`. Credentials are `access_key`/`secret_key`
//! (+`session_token`) when given, otherwise the AWS standard chain
//! (environment, profile, web identity, ECS, instance metadata). Secrets
//! are held in [`Secret`]; errors name the key id and endpoint only.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::{Credentials, Region};
use aws_sdk_kms::error::SdkError;
use aws_sdk_kms::primitives::Blob;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::{KeyWrapper, WrapError};
use crate::logical::Secret;

/// Keys a `seal "awskms"` stanza may hold (besides `disabled`).
pub const KEYS: &[&str] = &[
    "region",
    "kms_key_id",
    "endpoint",
    "access_key",
    "secret_key",
    "session_token",
];

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The resolved settings of one AWS KMS seal.
pub struct AwsKmsSeal {
    region: String,
    kms_key_id: String,
    endpoint: Option<String>,
    access_key: Option<String>,
    secret_key: Option<Secret>,
    session_token: Option<Secret>,
    client: OnceCell<Client>,
}

impl AwsKmsSeal {
    pub fn from_options(o: &BTreeMap<String, String>) -> Result<Self, (String, String)> {
        let get = |k: &str, env: &[&str]| {
            o.get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .or_else(|| env_first(env))
        };
        let kms_key_id = get(
            "kms_key_id",
            &["VAULT_AWSKMS_SEAL_KEY_ID", "AWS_KMS_KEY_ID"],
        )
        .ok_or_else(|| {
            (
                "kms_key_id".to_string(),
                "is required (or set VAULT_AWSKMS_SEAL_KEY_ID)".to_string(),
            )
        })?;
        let endpoint = get("endpoint", &["AWS_KMS_ENDPOINT"]);
        if let Some(ep) = &endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            return Err((
                "endpoint".into(),
                "must be an http:// or https:// URL".into(),
            ));
        }
        let access_key = o.get("access_key").filter(|v| !v.is_empty()).cloned();
        let secret_key = o.get("secret_key").filter(|v| !v.is_empty()).cloned();
        if access_key.is_some() != secret_key.is_some() {
            return Err((
                if access_key.is_some() {
                    "secret_key"
                } else {
                    "access_key"
                }
                .into(),
                "access_key and secret_key are given together (or neither, for the AWS credential chain)".into(),
            ));
        }
        Ok(AwsKmsSeal {
            region: get("region", &["AWS_REGION", "AWS_DEFAULT_REGION"])
                .unwrap_or_else(|| "us-east-1".into()),
            kms_key_id,
            endpoint,
            access_key,
            secret_key: secret_key.map(Secret::new),
            session_token: o
                .get("session_token")
                .filter(|v| !v.is_empty())
                .cloned()
                .map(Secret::new),
            client: OnceCell::new(),
        })
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let http_client = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .http_client(http_client)
                    .region(Region::new(self.region.clone()))
                    // One try per call: the auto-unseal loop retries with
                    // its own backoff and counts each failure.
                    .retry_config(RetryConfig::standard().with_max_attempts(1))
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(5))
                            .operation_timeout(Duration::from_secs(10))
                            .build(),
                    );
                if let (Some(id), Some(secret)) = (&self.access_key, &self.secret_key) {
                    loader = loader.credentials_provider(Credentials::new(
                        id.clone(),
                        secret.expose().to_string(),
                        self.session_token.as_ref().map(|t| t.expose().to_string()),
                        None,
                        "custos-seal-config",
                    ));
                }
                if let Some(ep) = &self.endpoint {
                    loader = loader.endpoint_url(ep.clone());
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    fn where_(&self) -> String {
        match &self.endpoint {
            Some(ep) => format!("KMS key {:?} at {ep}", self.kms_key_id),
            None => format!("KMS key {:?} in {}", self.kms_key_id, self.region),
        }
    }

    fn classify<E, R>(&self, op: &str, e: SdkError<E, R>) -> WrapError
    where
        E: aws_sdk_kms::error::ProvideErrorMetadata,
    {
        match &e {
            SdkError::ServiceError(se) => {
                let code = se.err().code().unwrap_or("unknown");
                let msg = se.err().message().unwrap_or("");
                let what = format!("{}: {op} refused: {code}: {msg}", self.where_());
                if matches!(
                    code,
                    "KMSInternalException" | "DependencyTimeoutException" | "ThrottlingException"
                ) {
                    WrapError::Unreachable(what)
                } else if code == "InvalidCiphertextException" {
                    WrapError::Decrypt(what)
                } else {
                    WrapError::Refused(what)
                }
            }
            SdkError::TimeoutError(_) => {
                WrapError::Unreachable(format!("{}: {op} timed out", self.where_()))
            }
            SdkError::DispatchFailure(_) => WrapError::Unreachable(format!(
                "{}: {op}: cannot connect (or no credentials)",
                self.where_()
            )),
            _ => WrapError::Unreachable(format!("{}: {op} failed", self.where_())),
        }
    }
}

#[async_trait::async_trait]
impl KeyWrapper for AwsKmsSeal {
    fn seal_type(&self) -> &'static str {
        "awskms"
    }

    fn describe(&self) -> String {
        self.where_()
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
        let out = self
            .client()
            .await
            .encrypt()
            .key_id(&self.kms_key_id)
            .plaintext(Blob::new(plaintext))
            .send()
            .await
            .map_err(|e| self.classify("Encrypt", e))?;
        out.ciphertext_blob.map(|b| b.into_inner()).ok_or_else(|| {
            WrapError::Refused(format!("{}: Encrypt answered no ciphertext", self.where_()))
        })
    }

    async fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, WrapError> {
        let out = self
            .client()
            .await
            .decrypt()
            .key_id(&self.kms_key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .send()
            .await
            .map_err(|e| self.classify("Decrypt", e))?;
        out.plaintext
            .map(|b| Zeroizing::new(b.into_inner()))
            .ok_or_else(|| {
                WrapError::Refused(format!("{}: Decrypt answered no plaintext", self.where_()))
            })
    }
}
