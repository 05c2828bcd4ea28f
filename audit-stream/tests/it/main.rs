//! Integration tests of custos-audit: the durable log and the file device
//! against real files in a temporary directory (and a tiny tmpfs for a full
//! disk), a kill -9 of a writer process, and the broker over real devices.

mod broker;
mod file;
mod log;
mod log_crash;
mod query;
mod ship;
mod support;
