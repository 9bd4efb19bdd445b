//! How callers authenticate in the OpenAPI description, and the tenant's own usage route.
//!
//! Authentication itself happens once, in the guard in front of every `/v1` route, which
//! puts the [`Principal`] in the request; [`ApiAuth`] only describes it to the spec.

use poem::web::Data;
use poem_openapi::auth::Bearer;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi, SecurityScheme};

use super::rest::ApiError;
use crate::app::AppState;
use crate::auth::Principal;
use crate::limits::Usage;

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

#[derive(ApiResponse)]
pub enum UsageResponse {
    #[oai(status = 200)]
    Ok(Json<Usage>),
    /// Missing or invalid API key.
    #[oai(status = 401)]
    Unauthorized(Json<ApiError>),
    /// A tenant or user limit was reached; retry after `Retry-After` seconds.
    #[oai(status = 429)]
    RateLimited(Json<ApiError>, #[oai(header = "Retry-After")] Option<u64>),
}

/// The usage route.
pub struct UsageApi {
    pub state: AppState,
}

#[OpenApi]
impl UsageApi {
    /// The calling tenant's spend today, reservations of running turns, token total and
    /// limits: what its budgets are measured against.
    #[oai(path = "/v1/usage", method = "get")]
    async fn usage(&self, _auth: ApiAuth, principal: Data<&Principal>) -> UsageResponse {
        UsageResponse::Ok(Json(self.state.limits.usage(&principal.0.tenant)))
    }
}
