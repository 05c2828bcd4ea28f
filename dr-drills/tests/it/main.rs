//! custos-dr integration tests (one binary). Filled in by the next commits.
