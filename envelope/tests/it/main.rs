//! Integration tests of `custos-envelope` against a real Custos dev server
//! started in-process on `127.0.0.1:0` (no outside service needed).

mod harness;
mod rotation;
