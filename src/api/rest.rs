//! The search route, described with poem-openapi (the spec is served at `/openapi.json`,
//! Swagger UI at `/docs`). Thin: validation and mapping only; the work happens in `retrieval`.

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::ApiAuth;
use super::strict::Str;
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::SearchMode;
use crate::error::ErrorCode;
use crate::retrieval::Retrieval;

/// Longest query accepted by `/v1/search`, in characters.
const MAX_QUERY_CHARS: usize = 2_000;

/// The error body of every REST route.
#[derive(Debug, Object)]
pub struct ApiError {
    /// Machine-readable code (the same vocabulary as the WebSocket `error` event).
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Json<Self> {
        Json(ApiError {
            code: code.as_str().into(),
            message: message.into(),
            retryable: code.retryable(),
        })
    }
}

/// A REST response that can carry an [`ApiError`]. Which variant — and so which HTTP
/// status — comes from [`ErrorCode::http_status`], the one mapping; a status a route does
/// not document goes out as its `Other` variant, with that status.
pub trait Fails: Sized {
    fn with_status(status: StatusCode, body: Json<ApiError>) -> Self;
}

/// Implements [`Fails`] for a response enum: each listed status to its variant, 429 to
/// `RateLimited` (without `Retry-After`), any other status to `Other`.
macro_rules! fails {
    ($ty:ty { $($status:literal => $variant:ident),* $(,)? }) => {
        impl $crate::api::rest::Fails for $ty {
            fn with_status(
                status: poem::http::StatusCode,
                body: poem_openapi::payload::Json<$crate::api::rest::ApiError>,
            ) -> Self {
                match status.as_u16() {
                    $($status => Self::$variant(body),)*
                    429 => Self::RateLimited(body, None),
                    _ => Self::Other(status, body),
                }
            }
        }
    };
}
pub(crate) use fails;

/// The response for `code`, with `message`.
pub fn failure<R: Fails>(code: ErrorCode, message: impl Into<String>) -> R {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    R::with_status(status, ApiError::new(code, message))
}

#[derive(Debug, Object)]
pub struct SearchRequest {
    /// The question or keywords (1–2,000 characters, not only spaces).
    #[oai(validator(min_length = 1, max_length = 2000, pattern = r"\S"))]
    pub query: Str,
    /// How many results (1–50; default from config).
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "50")))]
    pub top_k: Option<u32>,
    /// Minimum cosine similarity (default from config; not applied in sparse mode).
    #[oai(nullable)]
    pub score_floor: Option<f32>,
    /// dense, sparse or hybrid (default from config: `retrieval.mode`).
    #[oai(nullable, validator(pattern = "^(dense|sparse|hybrid)$"))]
    pub mode: Option<Str>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct SearchResult {
    pub doc_id: String,
    pub title: String,
    /// Heading path inside the document, " › "-joined.
    pub section: String,
    /// First page of the chunk (PDFs).
    pub page: Option<u32>,
    pub chunk: u32,
    pub score: f32,
    pub text: String,
}

#[derive(Debug, Object)]
pub struct SearchResponseBody {
    pub results: Vec<SearchResult>,
    pub dropped_duplicates: u32,
    pub took_ms: u64,
}

#[derive(ApiResponse)]
pub enum SearchResponse {
    #[oai(status = 200)]
    Ok(Json<SearchResponseBody>),
    /// Empty or oversize query.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// Retrieval is disabled, overloaded or failing.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
    /// Missing or invalid API key.
    #[oai(status = 401)]
    Unauthorized(Json<ApiError>),
    /// A tenant or user limit was reached; retry after `Retry-After` seconds.
    #[oai(status = 429)]
    RateLimited(Json<ApiError>, #[oai(header = "Retry-After")] Option<u64>),
    /// Another failure: the status and `code` say which.
    Other(StatusCode, Json<ApiError>),
}

fails!(SearchResponse {
    400 => BadRequest,
    401 => Unauthorized,
    503 => Unavailable,
});

/// The search route.
pub struct RetrievalApi {
    pub state: AppState,
}

impl RetrievalApi {
    fn retrieval(&self) -> Result<&Retrieval, SearchResponse> {
        self.state.retrieval.as_deref().ok_or_else(|| {
            failure(
                ErrorCode::RetrievalUnavailable,
                "retrieval is disabled on this server (retrieval.enabled = false)",
            )
        })
    }
}

#[OpenApi]
impl RetrievalApi {
    /// Search the tenant's documents.
    #[oai(path = "/v1/search", method = "post")]
    async fn search(
        &self,
        _auth: ApiAuth,
        principal: Data<&Principal>,
        body: Json<SearchRequest>,
    ) -> SearchResponse {
        let r = match self.retrieval() {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        let query = body.query.trim();
        if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
            return failure(
                ErrorCode::InvalidMessage,
                format!("query must have 1 to {MAX_QUERY_CHARS} characters"),
            );
        }
        let k = body
            .top_k
            .map(|k| k.clamp(1, 50) as usize)
            .unwrap_or(r.cfg.top_k);
        let floor = body.score_floor.unwrap_or(r.cfg.score_floor);
        let mode = match body.mode.as_deref() {
            None => r.cfg.mode,
            Some("dense") => SearchMode::Dense,
            Some("sparse") => SearchMode::Sparse,
            Some("hybrid") => SearchMode::Hybrid,
            Some(other) => {
                return failure(
                    ErrorCode::InvalidMessage,
                    format!("mode {other:?}: use dense, sparse or hybrid"),
                );
            }
        };
        match r.search(&principal.0.tenant, query, k, floor, mode).await {
            Ok(found) => SearchResponse::Ok(Json(SearchResponseBody {
                dropped_duplicates: found.dropped_duplicates as u32,
                took_ms: found.took.as_millis() as u64,
                results: found
                    .hits
                    .into_iter()
                    .map(|h| SearchResult {
                        doc_id: h.doc_id,
                        title: h.title,
                        section: h.section,
                        page: h.page,
                        chunk: h.chunk as u32,
                        score: h.score,
                        text: h.text,
                    })
                    .collect(),
            })),
            Err(e) => failure(ErrorCode::from(&e), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use poem::IntoResponse;

    use super::*;

    /// Every code goes out with the status `ErrorCode::http_status` gives it.
    #[test]
    fn every_code_keeps_its_one_status() {
        for code in ErrorCode::ALL {
            let resp: SearchResponse = failure(code, "x");
            assert_eq!(
                resp.into_response().status().as_u16(),
                code.http_status(),
                "{code:?}"
            );
        }
    }
}
