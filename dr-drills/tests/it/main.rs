//! custos-dr integration tests: one binary, one module per destination.
//!
//! `local` runs everywhere (a `TempDir`). `s3` runs against the real Garage
//! instances scripts/lib/services.sh starts (`start_garage`), found through
//! `CUSTOS_TEST_S3*` variables; without them those tests skip with a printed
//! reason, except under `CI=true`, where a missing variable fails the test.

mod drill;
mod fixture;
mod local;
mod s3;
mod support;
