//! `custos-core`: the Custos server.
//!
//! A request enters through [`http`] (axum on TCP/TLS), becomes a
//! [`logical::Request`], and runs the pipeline in [`core::Core`]: token lookup
//! ([`token`]) → ACL ([`policy`]) → audit ([`audit`], fail closed) → route by
//! the mount table ([`router`]) to a backend ([`sys`], [`engines::kv`],
//! [`token`]) → storage through the [`barrier`] into Raft ([`storage::raft`])
//! → audit the response → Vault's JSON envelope. The [`seal`] guards the
//! barrier's keyring with Shamir shares, or [`autoseal`] through a KMS or
//! another server's transit key; [`config`] reads Vault-shaped HCL.
//! In a cluster a standby sends requests to the active node ([`forward`]).
//! Machines and people log in through auth methods ([`auth`]), which core
//! turns into tokens tied to an identity entity ([`identity`]).

pub mod audit;
pub mod audit_nodes;
pub mod auth;
pub mod autopilot;
pub mod autoseal;
pub mod background;
pub mod barrier;
pub mod ceremony;
pub mod cluster;
pub mod cluster_tls;
pub mod config;
pub mod core;
pub mod engines;
pub mod error;
pub mod forward;
pub mod http;
pub mod identity;
pub mod logical;
pub mod metrics;
pub mod periodic;
pub mod policy;
pub mod raft_snapshot;
pub mod rootkey;
pub mod router;
pub mod seal;
pub mod server;
pub mod snapshot_auto;
pub mod state_digest;
pub mod storage;
pub mod sys;
pub mod token;
pub mod traces;
pub mod wrapping;
