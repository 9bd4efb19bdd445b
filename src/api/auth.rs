//! How callers authenticate, as the OpenAPI description tells it.
//!
//! Authentication itself happens once, in the guard in front of every `/v1` route, which
//! puts the [`crate::auth::Principal`] in the request; [`ApiAuth`] only describes it to the
//! spec.

use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

/// A tenant's API key: `Authorization: Bearer cfk_…`. Not needed when the server runs in
/// dev mode (`auth.dev_mode`, one keyless tenant, never in production).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "cfk_<48 hex digits>")]
#[allow(dead_code)] // the guard reads the key from the header; this type describes it
pub struct ApiKey(Bearer);

/// The key, or nothing in dev mode.
#[derive(SecurityScheme)]
pub enum ApiAuth {
    ApiKey(ApiKey),
    #[oai(fallback)]
    DevMode,
}
