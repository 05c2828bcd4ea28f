//! The core's side of audit: building the broker from the declared devices
//! (with their salts kept behind the barrier) and turning a request and its
//! outcome into `custos-audit` events.
//!
//! Data comes from [`crate::core::Core::handle`] (the request, the caller's
//! token entry, the result) and goes to the [`AuditBroker`], which hashes and
//! records it on every device before the pipeline may continue.

use std::sync::Arc;

use custos_audit::{
    AuditAuth, AuditBroker, AuditDevice, AuditEvent, AuditRequest, AuditResponse, FileDevice, Salt,
};
use serde_json::Value;

use crate::config::AuditDeviceConfig;
use crate::error::{CoreError, Result};
use crate::logical::{Request, Response};
use crate::storage::StorageView;
use crate::token::TokenEntry;

/// Open every declared device. A device that cannot be opened fails the
/// unseal, as in Vault: an unaudited server must not serve.
pub async fn build_broker(
    devices: &[AuditDeviceConfig],
    system: &StorageView,
) -> Result<AuditBroker> {
    let broker = AuditBroker::new();
    for d in devices {
        let salt = load_or_create_salt(system, &d.path).await?;
        let device: Arc<dyn AuditDevice> = match d.kind.as_str() {
            "file" => Arc::new(
                FileDevice::from_options(&d.path, &d.description, &d.options, salt)
                    .map_err(|e| CoreError::Internal(format!("audit device {:?}: {e}", d.path)))?,
            ),
            other => {
                return Err(CoreError::Internal(format!(
                    "audit device {:?}: type {other:?} is not available in this build",
                    d.path
                )));
            }
        };
        broker
            .add(device)
            .map_err(|e| CoreError::Internal(format!("audit device {:?}: {e}", d.path)))?;
    }
    Ok(broker)
}

async fn load_or_create_salt(system: &StorageView, path: &str) -> Result<Salt> {
    let key = format!("audit-salt/{}", path.trim_end_matches('/'));
    if let Some(bytes) = system.get(&key).await? {
        return Salt::new(bytes)
            .map_err(|e| CoreError::Internal(format!("audit salt for {path:?}: {e}")));
    }
    let salt = Salt::generate();
    system.put(&key, salt.as_bytes().to_vec()).await?;
    Ok(salt)
}

fn auth_of(entry: &TokenEntry, raw_token: &str) -> AuditAuth {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    AuditAuth {
        client_token: raw_token.to_string(),
        accessor: entry.accessor.clone(),
        display_name: entry.display_name.clone(),
        policies: entry.policies.clone(),
        token_policies: entry.policies.clone(),
        metadata: entry.meta.clone(),
        entity_id: entry.entity_id.clone(),
        token_type: entry.token_type.clone(),
        token_ttl: if entry.expire_time > 0 {
            (entry.expire_time - now).max(0)
        } else {
            0
        },
        token_issue_time: crate::barrier::rfc3339(entry.creation_time),
        remaining_uses: entry.num_uses,
        ..Default::default()
    }
}

fn request_of(req: &Request, entry: &TokenEntry, raw_token: &str) -> AuditRequest {
    let mut r = AuditRequest::new(req.id.clone(), req.operation.as_str(), req.path.clone());
    r.mount_point = req.mount_point.clone();
    r.mount_type = req.mount_type.clone();
    r.client_token = raw_token.to_string();
    r.client_token_accessor = entry.accessor.clone();
    r.data = (!req.data.is_empty()).then(|| Value::Object(req.data.clone()));
    if let Some(a) = req.remote_addr {
        r.remote_address = a.ip().to_string();
        r.remote_port = a.port();
    }
    r
}

/// The request event; `denied` carries the error when the ACL refused it.
pub fn request_event(req: &Request, entry: &TokenEntry, denied: Option<&str>) -> AuditEvent {
    let raw = req
        .client_token
        .as_ref()
        .map(|t| t.expose())
        .unwrap_or_default();
    let ev = AuditEvent::request(Some(auth_of(entry, raw)), request_of(req, entry, raw));
    match denied {
        Some(e) => ev.with_error(e),
        None => ev,
    }
}

/// The response event for a finished request.
pub fn response_event(req: &Request, entry: &TokenEntry, result: &Result<Response>) -> AuditEvent {
    let raw = req
        .client_token
        .as_ref()
        .map(|t| t.expose())
        .unwrap_or_default();
    let mut resp = AuditResponse {
        mount_point: req.mount_point.clone(),
        mount_type: req.mount_type.clone(),
        ..Default::default()
    };
    let error = match result {
        Ok(r) => {
            resp.data = r.data.as_ref().map(|d| Value::Object(d.clone()));
            resp.warnings = r.warnings.clone();
            if let Some(a) = &r.auth {
                resp.auth = Some(AuditAuth {
                    client_token: a.client_token.clone(),
                    accessor: a.accessor.clone(),
                    policies: a.policies.clone(),
                    token_policies: a.token_policies.clone(),
                    metadata: a.metadata.clone().unwrap_or_default(),
                    token_type: a.token_type.clone(),
                    token_ttl: a.lease_duration,
                    num_uses: a.num_uses,
                    ..Default::default()
                });
            }
            None
        }
        Err(e) => Some(e.messages().join("; ")),
    };
    AuditEvent::response(
        Some(auth_of(entry, raw)),
        request_of(req, entry, raw),
        resp,
        error,
    )
}
