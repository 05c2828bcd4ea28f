//! custos-audit: the audit side of Custos.
//!
//! Every request the server handles becomes two events (request and response)
//! in Vault's audit JSON format ([`event`]). The core builds the events and
//! hands them to the [`broker::AuditBroker`], which gives each enabled device a
//! copy; each device HMACs the secrets in its copy with its own salt
//! ([`hash`]) and records it. The [`file::FileDevice`] appends each event to
//! the durable local audit log ([`log::AuditLog`]: segmented files, one JSON
//! line per record with a sequence number and CRC, group commit with fsync)
//! before the call returns; shippers read that log back with
//! [`log::LogReader`] from their [`log::Checkpoint`]. A request proceeds only
//! if at least one device recorded it. Shippers ([`ship`]) stream the log to
//! Kafka and Elasticsearch from their own checkpoints, off the request path.
//!
//! Metric names live in [`metrics`]; errors in [`error`].

pub mod access;
pub mod broker;
pub mod error;
pub mod event;
pub mod file;
pub mod hash;
pub mod log;
pub mod metrics;
pub mod query;
pub mod reconcile;
pub mod ship;

pub use broker::{AuditBroker, AuditDevice, DeviceInfo, EncodedEvent};
pub use error::AuditError;
pub use event::{AuditAuth, AuditEvent, AuditRequest, AuditResponse, EventType};
pub use file::{FileDevice, FileOptions};
pub use hash::{HashOptions, Salt, hash_event, hmac_sha256};
pub use log::{AuditLog, Checkpoint, LogDir, LogReader, Record, VerifyReport};
