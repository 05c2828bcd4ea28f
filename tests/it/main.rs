//! End-to-end tests of the `custos` binary: each test starts the real server
//! (`server --dev` or `server --config`) on 127.0.0.1:0 in a temp dir and
//! talks HTTP to it, as a user would.

mod audit_file;
mod audit_query;
mod audit_sinks;
mod auth_approle;
mod auth_jwt;
mod auth_kubernetes;
mod auth_userpass;
mod autounseal;
mod autounseal_ceremony;
mod ceremony;
mod cli;
mod cluster;
mod cluster_audit;
mod cluster_faults;
mod cluster_ha;
mod cluster_harness;
mod cluster_tls;
mod crash;
mod drill;
mod harness;
mod http_api;
mod identity;
mod kv_v1;
mod netfault;
mod raft_snapshot;
mod rotator;
mod snapshot_auto;
mod standby_reads;
mod tls;
mod wrapping;
