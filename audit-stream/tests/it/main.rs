//! Integration tests of custos-audit: the file device against real files in
//! a temporary directory, and the broker over real file devices.

mod broker;
mod file;
mod support;
