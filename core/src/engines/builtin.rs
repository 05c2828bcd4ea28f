//! The stand-in backend of a built-in mount whose engine Custos does not
//! serve yet (`identity/`; `cubbyhole/` is served by
//! [`crate::engines::cubbyhole`]).
//!
//! The mount table lists these mounts as Vault does (see
//! [`crate::router::builtin_secret_mounts`]), so tooling that reads
//! `sys/mounts` finds them and nobody can mount over them; requests routed
//! here get the router's `404 unsupported path`, because the path table is
//! empty. When an engine lands, `Core::instantiate` builds it instead for
//! that mount type; the entry, its UUID and so its storage stay as they are.

use async_trait::async_trait;

use crate::error::{CoreError, Result};
use crate::logical::{Backend, Ctx, PathSpec, Response};

/// A backend with no paths: every request is `404 unsupported path`.
#[derive(Debug, Default)]
pub struct UnservedBackend;

#[async_trait]
impl Backend for UnservedBackend {
    fn paths(&self) -> &'static [PathSpec] {
        &[]
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        // Not reachable through the router (no row matches); answer the same.
        Err(CoreError::NotFound(format!(
            "unsupported path: {}{}",
            ctx.req.mount_point, ctx.req.relative_path
        )))
    }
}
