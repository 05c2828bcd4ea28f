//! An S3 bucket as a snapshot destination (`storage_type = "aws-s3"`, and the
//! `copy_to_*` second destination), through aws-sdk-s3.
//!
//! Config fields mirror Vault Enterprise's snapshot-auto API (`aws_s3_bucket`,
//! `aws_s3_region`, `aws_s3_endpoint`, ...). Credentials are the static
//! `aws_access_key_id`/`aws_secret_access_key` (+ `aws_session_token`) when
//! given, else the standard AWS chain from aws-config built without its
//! default features: environment (`AWS_ACCESS_KEY_ID`, ...), shared profile
//! files, web identity (the one reason aws-sdk-sts is linked), ECS and IMDS;
//! SSO and `credential_process` are left out to keep the build small. The
//! HTTP client is hyper 1 + rustls on ring, as in the rest of the workspace
//! (no aws-lc-sys, no OpenSSL).
//!
//! Data flows from a `ByteStream` into a multipart upload: the stream is cut
//! into parts of `part_size` bytes (8 MiB by default), each buffered alone and
//! sent with UploadPart, then CompleteMultipartUpload; any error aborts the
//! upload. A stream shorter than one part is sent as one PutObject. Downloads
//! stream GetObject's body. Every request uses the SDK's standard retry
//! (exponential backoff with jitter); failures are classified into
//! [`DestinationError`] variants that name the endpoint and bucket.

use super::{
    ByteStream, Destination, DestinationKind, ObjectInfo, Tally, UploadResult, validate_key,
};
use crate::{
    error::{DestinationError, error_chain},
    secret::SecretString,
};
use async_trait::async_trait;
use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation, retry::RetryConfig, timeout::TimeoutConfig,
    },
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::{
        create_multipart_upload::builders::CreateMultipartUploadFluentBuilder,
        put_object::builders::PutObjectFluentBuilder,
    },
    primitives::ByteStream as SdkByteStream,
    types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption},
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;
use std::{
    io,
    time::{Duration, Instant, SystemTime},
};

/// Default size of one multipart part.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// S3's smallest allowed part (all but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's largest part number.
const MAX_PARTS: u32 = 10_000;

/// Where and how to reach a bucket; the field names are Vault Enterprise's
/// snapshot-auto ones.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub aws_s3_bucket: String,
    pub aws_s3_region: String,
    /// `https://host:port` of an S3-compatible service; AWS when unset.
    #[serde(default)]
    pub aws_s3_endpoint: Option<String>,
    #[serde(default)]
    pub aws_s3_force_path_style: bool,
    /// Ask for SSE-S3 (`AES256`) on every object.
    #[serde(default)]
    pub aws_s3_server_side_encryption: bool,
    /// Use SSE-KMS with this key instead.
    #[serde(default)]
    pub aws_s3_kms_key: Option<String>,
    #[serde(default)]
    pub aws_access_key_id: Option<String>,
    #[serde(default)]
    pub aws_secret_access_key: Option<SecretString>,
    #[serde(default)]
    pub aws_session_token: Option<SecretString>,
}

impl S3Config {
    /// Checks the fields; errors name the field at fault.
    pub fn validate(&self) -> Result<(), DestinationError> {
        let bad = |field, message: &str| {
            Err(DestinationError::Config {
                field,
                message: message.to_string(),
            })
        };
        let bucket = &self.aws_s3_bucket;
        if bucket.is_empty() {
            return bad("aws_s3_bucket", "is required");
        }
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return bad(
                "aws_s3_bucket",
                "must be 3 to 63 characters of lowercase letters, digits, '-' and '.'",
            );
        }
        if self.aws_s3_region.is_empty() {
            return bad("aws_s3_region", "is required");
        }
        if let Some(ep) = &self.aws_s3_endpoint {
            let rest = ep
                .strip_prefix("https://")
                .or_else(|| ep.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {}
                _ => return bad("aws_s3_endpoint", "must be an http:// or https:// URL"),
            }
        }
        let has_id = self
            .aws_access_key_id
            .as_deref()
            .is_some_and(|s| !s.is_empty());
        let has_secret = self
            .aws_secret_access_key
            .as_ref()
            .is_some_and(|s| !s.is_empty());
        match (has_id, has_secret) {
            (true, false) => {
                return bad(
                    "aws_secret_access_key",
                    "is required with aws_access_key_id",
                );
            }
            (false, true) => {
                return bad(
                    "aws_access_key_id",
                    "is required with aws_secret_access_key",
                );
            }
            _ => {}
        }
        if self.aws_session_token.is_some() && !has_id {
            return bad(
                "aws_session_token",
                "needs aws_access_key_id and aws_secret_access_key",
            );
        }
        if self.aws_s3_kms_key.as_deref() == Some("") {
            return bad("aws_s3_kms_key", "must not be empty when set");
        }
        Ok(())
    }

    /// The endpoint as shown in messages.
    pub fn endpoint_display(&self) -> String {
        match &self.aws_s3_endpoint {
            Some(ep) => ep.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", self.aws_s3_region),
        }
    }
}

/// Knobs that are not part of Vault's config.
#[derive(Clone, Debug)]
pub struct S3Tuning {
    /// Bytes per multipart part (≥ 5 MiB).
    pub part_size: usize,
    /// Attempts per request, first included (SDK standard retry).
    pub max_attempts: u32,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Time to wait for the first byte of a response.
    pub read_timeout: Duration,
}

impl Default for S3Tuning {
    fn default() -> Self {
        Self {
            part_size: DEFAULT_PART_SIZE,
            max_attempts: 4,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// Snapshots in an S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Destination {
    client: Client,
    bucket: String,
    endpoint: String,
    sse: Option<(ServerSideEncryption, Option<String>)>,
    part_size: usize,
}

impl S3Destination {
    /// Builds a client for `config` with default tuning. Does not touch the
    /// network (credentials from the chain are resolved at the first request).
    pub async fn new(config: &S3Config) -> Result<Self, DestinationError> {
        Self::with_tuning(config, S3Tuning::default()).await
    }

    pub async fn with_tuning(
        config: &S3Config,
        tuning: S3Tuning,
    ) -> Result<Self, DestinationError> {
        config.validate()?;
        if tuning.part_size < MIN_PART_SIZE {
            return Err(DestinationError::Config {
                field: "part_size",
                message: format!("must be at least {MIN_PART_SIZE} bytes (S3's minimum part)"),
            });
        }
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(config.aws_s3_region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(tuning.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(tuning.connect_timeout)
                    .read_timeout(tuning.read_timeout)
                    .build(),
            );
        if let (Some(id), Some(secret)) = (&config.aws_access_key_id, &config.aws_secret_access_key)
            && !id.is_empty()
        {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.expose().to_string(),
                config
                    .aws_session_token
                    .as_ref()
                    .map(|t| t.expose().to_string()),
                None,
                "custos-snapshot-config",
            ));
        }
        if let Some(ep) = &config.aws_s3_endpoint {
            loader = loader.endpoint_url(ep.clone());
        }
        let sdk_config = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(config.aws_s3_force_path_style)
            // Checksums only where S3 requires them: S3-compatible stores
            // vary in their support for the newer flexible checksums, and
            // integrity is checked end to end by the snapshot's own SHA-256.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let sse = match (&config.aws_s3_kms_key, config.aws_s3_server_side_encryption) {
            (Some(key), _) => Some((ServerSideEncryption::AwsKms, Some(key.clone()))),
            (None, true) => Some((ServerSideEncryption::Aes256, None)),
            (None, false) => None,
        };
        Ok(Self {
            client: Client::from_conf(s3_config),
            bucket: config.aws_s3_bucket.clone(),
            endpoint: config.endpoint_display(),
            sse,
            part_size: tuning.part_size,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Checks that the bucket exists and the credentials may use it
    /// (HeadBucket); for validating a config before saving it.
    pub async fn check_bucket(&self) -> Result<(), DestinationError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("HeadBucket", None, e))
    }

    /// Multipart uploads under `prefix` that were started and never finished.
    pub async fn pending_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<PendingUpload>, DestinationError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.classify("ListMultipartUploads", None, e))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                out.push(PendingUpload {
                    key: key.to_string(),
                    upload_id: id.to_string(),
                    initiated: u.initiated().and_then(|t| SystemTime::try_from(*t).ok()),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    fn sse_put(&self, req: PutObjectFluentBuilder) -> PutObjectFluentBuilder {
        match &self.sse {
            Some((sse, key)) => req
                .server_side_encryption(sse.clone())
                .set_ssekms_key_id(key.clone()),
            None => req,
        }
    }

    fn sse_create(
        &self,
        req: CreateMultipartUploadFluentBuilder,
    ) -> CreateMultipartUploadFluentBuilder {
        match &self.sse {
            Some((sse, key)) => req
                .server_side_encryption(sse.clone())
                .set_ssekms_key_id(key.clone()),
            None => req,
        }
    }

    async fn put_object(&self, key: &str, body: Bytes) -> Result<(), DestinationError> {
        let len = body.len() as i64;
        self.sse_put(
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(len)
                .body(SdkByteStream::from(body)),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| self.classify("PutObject", Some(key), e))
    }

    /// Uploads the parts of an open multipart upload: what `buf` holds
    /// (already read) and the rest of `body`, cut into parts of exactly
    /// `part_size` bytes but the last. Returns the parts for
    /// CompleteMultipartUpload.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        mut buf: BytesMut,
        mut ended: bool,
        mut body: ByteStream,
        tally: &mut Tally,
    ) -> Result<Vec<CompletedPart>, DestinationError> {
        let mut parts = Vec::new();
        loop {
            if !ended && buf.len() < self.part_size {
                ended = fill_part(key, &mut body, &mut buf, self.part_size, tally).await?;
            }
            if buf.is_empty() {
                break;
            }
            let data = take_part(&mut buf, self.part_size);
            let number = parts.len() as u32 + 1;
            if number > MAX_PARTS {
                return Err(DestinationError::Config {
                    field: "part_size",
                    message: format!(
                        "the object needs more than {MAX_PARTS} parts of {} bytes; raise part_size",
                        self.part_size
                    ),
                });
            }
            let len = data.len() as i64;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number as i32)
                .content_length(len)
                .body(SdkByteStream::from(data))
                .send()
                .await
                .map_err(|e| self.classify("UploadPart", Some(key), e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number as i32)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
        }
        Ok(parts)
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), DestinationError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("AbortMultipartUpload", Some(key), e))
    }

    fn not_found(&self, key: &str) -> DestinationError {
        DestinationError::NotFound {
            destination: self.describe(),
            key: key.to_string(),
        }
    }

    /// Sorts an SDK error into a [`DestinationError`].
    fn classify<E>(
        &self,
        operation: &'static str,
        key: Option<&str>,
        err: SdkError<E>,
    ) -> DestinationError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let endpoint = self.endpoint.clone();
        let bucket = self.bucket.clone();
        match &err {
            SdkError::DispatchFailure(d) if d.is_timeout() => DestinationError::Timeout {
                endpoint,
                operation,
            },
            SdkError::DispatchFailure(_) => DestinationError::Unreachable {
                endpoint,
                operation,
                detail: error_chain(&err),
            },
            SdkError::TimeoutError(_) => DestinationError::Timeout {
                endpoint,
                operation,
            },
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().unwrap_or("").to_string();
                let message = se.err().message().unwrap_or("").to_string();
                match code.as_str() {
                    "NoSuchBucket" => DestinationError::NoSuchBucket { endpoint, bucket },
                    "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken"
                    | "InvalidSecurity" => DestinationError::AccessDenied {
                        endpoint,
                        bucket,
                        operation,
                        code: with_message(code, &message),
                    },
                    "NoSuchKey" | "NoSuchUpload" => match key {
                        Some(k) => self.not_found(k),
                        None => DestinationError::Service {
                            endpoint,
                            bucket,
                            operation,
                            status,
                            code,
                            message,
                        },
                    },
                    _ if status == 403 => DestinationError::AccessDenied {
                        endpoint,
                        bucket,
                        operation,
                        code: with_message(
                            if code.is_empty() {
                                "HTTP 403".into()
                            } else {
                                code
                            },
                            &message,
                        ),
                    },
                    _ if status == 404 && key.is_none() => {
                        DestinationError::NoSuchBucket { endpoint, bucket }
                    }
                    _ if status == 404 => self.not_found(key.unwrap_or_default()),
                    _ => DestinationError::Service {
                        endpoint,
                        bucket,
                        operation,
                        status,
                        code,
                        message,
                    },
                }
            }
            SdkError::ResponseError(r) => DestinationError::Service {
                endpoint,
                bucket,
                operation,
                status: r.raw().status().as_u16(),
                code: String::new(),
                message: DisplayErrorContext(&err).to_string(),
            },
            _ => DestinationError::Service {
                endpoint,
                bucket,
                operation,
                status: 0,
                code: String::new(),
                message: error_chain(&err),
            },
        }
    }
}

/// `code: message` (S3 messages hold no credentials; they say which check
/// failed, e.g. an unknown key or a bad signature).
fn with_message(code: String, message: &str) -> String {
    if message.is_empty() {
        code
    } else {
        format!("{code}: {message}")
    }
}

/// Takes the first `part_size` bytes of `buf` (all of it when shorter) as
/// one part; what is left over (less than the last chunk read) stays in a
/// fresh buffer for the next part.
fn take_part(buf: &mut BytesMut, part_size: usize) -> Bytes {
    let mut next = BytesMut::with_capacity(part_size);
    if buf.len() > part_size {
        next.extend_from_slice(&buf[part_size..]);
        buf.truncate(part_size);
    }
    std::mem::replace(buf, next).freeze()
}

/// Reads from `body` into `buf` until it holds at least `part_size` bytes or
/// the stream ends; returns whether it ended.
async fn fill_part(
    key: &str,
    body: &mut ByteStream,
    buf: &mut BytesMut,
    part_size: usize,
    tally: &mut Tally,
) -> Result<bool, DestinationError> {
    while buf.len() < part_size {
        match body.next().await {
            Some(Ok(chunk)) => {
                tally.update(&chunk);
                buf.extend_from_slice(&chunk);
            }
            Some(Err(source)) => {
                return Err(DestinationError::Source {
                    key: key.to_string(),
                    source,
                });
            }
            None => return Ok(true),
        }
    }
    Ok(false)
}

fn sdk_stream(key: String, body: SdkByteStream) -> ByteStream {
    futures::stream::try_unfold((key, body), |(key, mut body)| async move {
        match body.try_next().await {
            Ok(Some(chunk)) => Ok(Some((chunk, (key, body)))),
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::other(DestinationError::Download {
                key: key.clone(),
                source: io::Error::other(DisplayErrorContext(&e).to_string()),
            })),
        }
    })
    .boxed()
}

#[async_trait]
impl Destination for S3Destination {
    fn kind(&self) -> DestinationKind {
        DestinationKind::S3
    }

    fn describe(&self) -> String {
        format!("s3://{} at {}", self.bucket, self.endpoint)
    }

    async fn upload(&self, key: &str, body: ByteStream) -> Result<UploadResult, DestinationError> {
        validate_key(key)?;
        // Parts are read until the stream ends, then once more: fuse it.
        let mut body: ByteStream = body.fuse().boxed();
        let started = Instant::now();
        let mut tally = Tally::default();
        let mut first = BytesMut::with_capacity(self.part_size);
        let ended = fill_part(key, &mut body, &mut first, self.part_size, &mut tally).await?;
        if ended && first.len() <= self.part_size {
            // The whole object fits in one part: one PutObject.
            self.put_object(key, first.freeze()).await?;
            let (bytes, sha256) = tally.finish();
            return Ok(UploadResult {
                bytes,
                sha256,
                parts: 1,
                duration: started.elapsed(),
            });
        }
        let created = self
            .sse_create(
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key),
            )
            .send()
            .await
            .map_err(|e| self.classify("CreateMultipartUpload", Some(key), e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(DestinationError::Service {
                endpoint: self.endpoint.clone(),
                bucket: self.bucket.clone(),
                operation: "CreateMultipartUpload",
                status: 200,
                code: String::new(),
                message: "the response has no UploadId".into(),
            });
        };
        let result = async {
            let parts = self
                .upload_parts(key, &upload_id, first, ended, body, &mut tally)
                .await?;
            let count = parts.len() as u32;
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.classify("CompleteMultipartUpload", Some(key), e))?;
            Ok::<u32, DestinationError>(count)
        }
        .await;
        match result {
            Ok(parts) => {
                let (bytes, sha256) = tally.finish();
                Ok(UploadResult {
                    bytes,
                    sha256,
                    parts,
                    duration: started.elapsed(),
                })
            }
            Err(e) => {
                if let Err(abort_err) = self.abort(key, &upload_id).await {
                    tracing::warn!(
                        destination = %self.describe(),
                        key,
                        error = %abort_err,
                        "could not abort the failed multipart upload; abort_stale_uploads will remove it"
                    );
                }
                Err(e)
            }
        }
    }

    async fn put_small(&self, key: &str, bytes: Bytes) -> Result<(), DestinationError> {
        validate_key(key)?;
        self.put_object(key, bytes).await
    }

    async fn get_small(&self, key: &str, max_bytes: u64) -> Result<Bytes, DestinationError> {
        validate_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify("GetObject", Some(key), e))?;
        if let Some(len) = out.content_length().filter(|l| *l as u64 > max_bytes) {
            return Err(DestinationError::TooLarge {
                key: key.to_string(),
                size: len as u64,
                max_bytes,
            });
        }
        let mut body = out.body;
        let mut buf = Vec::new();
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    if buf.len() as u64 > max_bytes {
                        return Err(DestinationError::TooLarge {
                            key: key.to_string(),
                            size: buf.len() as u64,
                            max_bytes,
                        });
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(DestinationError::Download {
                        key: key.to_string(),
                        source: io::Error::other(DisplayErrorContext(&e).to_string()),
                    });
                }
            }
        }
        Ok(Bytes::from(buf))
    }

    async fn download(&self, key: &str) -> Result<ByteStream, DestinationError> {
        validate_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify("GetObject", Some(key), e))?;
        Ok(sdk_stream(key.to_string(), out.body))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, DestinationError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.classify("ListObjectsV2", None, e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
            token = page.next_continuation_token().map(str::to_string);
            if page.is_truncated() != Some(true) || token.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), DestinationError> {
        validate_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify("DeleteObject", Some(key), e))
        {
            Ok(_) | Err(DestinationError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, DestinationError> {
        validate_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                last_modified: out
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })),
            Err(e) => match self.classify("HeadObject", Some(key), e) {
                // HEAD answers carry no error code: a 404 is a missing key or
                // a missing bucket. Ask which.
                DestinationError::NotFound { .. } => match self.check_bucket().await {
                    Ok(()) => Ok(None),
                    Err(e) => Err(e),
                },
                other => Err(other),
            },
        }
    }

    async fn abort_stale_uploads(
        &self,
        prefix: &str,
        older_than: Duration,
    ) -> Result<usize, DestinationError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut aborted = 0;
        for upload in self.pending_uploads(prefix).await? {
            // An upload without a start time is treated as stale.
            if upload.initiated.is_none_or(|t| t <= cutoff) {
                match self.abort(&upload.key, &upload.upload_id).await {
                    Ok(()) | Err(DestinationError::NotFound { .. }) => aborted += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3Config {
        S3Config {
            aws_s3_bucket: "custos-snapshots".into(),
            aws_s3_region: "garage-a".into(),
            aws_s3_endpoint: Some("http://127.0.0.1:3900".into()),
            aws_s3_force_path_style: true,
            aws_access_key_id: Some("GK0123".into()),
            aws_secret_access_key: Some(SecretString::new("topsecret")),
            ..Default::default()
        }
    }

    #[test]
    fn validate_names_the_field() {
        assert!(config().validate().is_ok());
        type Mutate = fn(&mut S3Config);
        let cases: [(&str, Mutate); 6] = [
            ("aws_s3_bucket", |c| c.aws_s3_bucket.clear()),
            ("aws_s3_bucket", |c| c.aws_s3_bucket = "Bad_Bucket".into()),
            ("aws_s3_region", |c| c.aws_s3_region.clear()),
            ("aws_s3_endpoint", |c| {
                c.aws_s3_endpoint = Some("127.0.0.1:3900".into())
            }),
            ("aws_secret_access_key", |c| c.aws_secret_access_key = None),
            ("aws_access_key_id", |c| c.aws_access_key_id = None),
        ];
        for (field, mutate) in cases {
            let mut c = config();
            mutate(&mut c);
            match c.validate() {
                Err(DestinationError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn parts_are_cut_exactly() {
        let mut buf = BytesMut::from(&b"abcdefg"[..]);
        assert_eq!(&take_part(&mut buf, 3)[..], b"abc");
        assert_eq!(&buf[..], b"defg");
        assert_eq!(&take_part(&mut buf, 3)[..], b"def");
        assert_eq!(&take_part(&mut buf, 3)[..], b"g");
        assert!(buf.is_empty());
    }

    #[test]
    fn config_debug_hides_the_secret() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn config_from_json_refuses_unknown_fields() {
        let c: S3Config = serde_json::from_str(
            r#"{"aws_s3_bucket":"b-1","aws_s3_region":"r","aws_s3_force_path_style":true}"#,
        )
        .unwrap();
        assert!(c.aws_s3_force_path_style);
        assert!(
            serde_json::from_str::<S3Config>(
                r#"{"aws_s3_bucket":"b-1","aws_s3_region":"r","bogus":1}"#
            )
            .is_err()
        );
    }
}
