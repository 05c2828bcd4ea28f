//! custos-dr: disaster recovery for Custos.
//!
//! Snapshots come from custos-core (the Vault-format Raft snapshot stream) and
//! go to a [`destination::Destination`]: a local directory (the embedded
//! default) or an S3 bucket, optionally copied to a second bucket in another
//! region ([`copy`]). A snapshot `X.snap` counts only once its manifest
//! `X.manifest.json` exists ([`layout`]); [`retention`] prunes old ones and
//! never the newest good one. Restore drills read snapshots back through the
//! same destination layer.
//!
//! Errors are typed ([`DestinationError`]) and carry a bounded
//! [`ErrorKind`] for metric labels; no error message ever holds a secret.

pub mod agent;
pub mod copy;
pub mod destination;
pub mod drill;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod retention;
pub mod secret;

pub use destination::{
    ByteStream, Destination, DestinationKind, ObjectInfo, UploadResult,
    local::LocalDestination,
    s3::{S3Config, S3Destination},
};
pub use error::{DestinationError, ErrorKind};
pub use secret::SecretString;
