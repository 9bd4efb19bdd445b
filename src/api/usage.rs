//! The tenant's own usage route.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::auth::ApiAuth;
use super::rest::ApiError;
use crate::app::AppState;
use crate::auth::Principal;
use crate::limits::Usage;

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
        UsageResponse::Ok(Json(self.state.limits.usage(&principal.0.tenant).await))
    }
}
