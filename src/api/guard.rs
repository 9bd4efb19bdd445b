//! Around the REST routes: authenticate (the API key names the tenant every route works for),
//! count the request against its tenant's and user's rate limits, refuse oversize or unsized
//! bodies before anything is read, and give
//! every error that happens before a handler (malformed JSON, a missing multipart field, a
//! wrong method) the route's own error shape — OpenAI's for `/v1/chat/completions`.

use std::sync::Arc;

use poem::http::{Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use super::routes::ErrorShape;
use crate::app::AppState;
use crate::auth::AuthError;
use crate::error::ErrorCode;
use crate::limits::LimitError;

/// The route's own error body (the REST `ApiError`, or OpenAI's shape) with `status`.
pub fn error(path: &str, status: StatusCode, code: ErrorCode, message: String) -> Response {
    let route = super::routes::lookup(path);
    let mut resp = match route.shape {
        ErrorShape::OpenAi => poem_openapi::payload::Json(super::openai::OpenAiError {
            error: super::openai::body(code, message, None),
        })
        .into_response(),
        ErrorShape::Rest | ErrorShape::Plain => {
            super::rest::ApiError::new(code, message).into_response()
        }
    };
    resp.set_status(status);
    if status == StatusCode::METHOD_NOT_ALLOWED
        && let Ok(v) = route.methods.parse()
    {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// A 401 (with the `WWW-Authenticate` challenge) or 403, counted.
pub fn refused(path: &str, e: &AuthError) -> Response {
    crate::metrics::auth_failure(e.as_str());
    let code = e.code();
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut resp = error(path, status, code, e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            poem::http::HeaderValue::from_static("Bearer realm=\"confab\""),
        );
    }
    resp
}

/// A 429 with `Retry-After`.
pub fn limited(path: &str, e: &LimitError) -> Response {
    let code = ErrorCode::from(e);
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let mut resp = error(path, status, code, e.to_string());
    if let Some(v) = e
        .retry_after_secs()
        .and_then(|s| s.to_string().parse().ok())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

pub async fn guard<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    limit: usize,
) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    let Some(state) = req.data::<AppState>() else {
        return Err(poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR));
    };
    let principal = match state.auth.http(req.headers()) {
        Ok(p) => p,
        Err(e) => return Ok(refused(&path, &e)),
    };
    if let Err(e) = state.limits.request(&principal).await {
        return Ok(limited(&path, &e));
    }
    req.extensions_mut().insert(principal);
    if req.method() == Method::POST
        && let Err(refused) = bound_body(&mut req, &path, limit).await
    {
        return Ok(refused);
    }
    match ep.call(req).await {
        Ok(resp) => Ok(resp.into_response()),
        Err(e) if e.status() == StatusCode::NOT_FOUND => Err(e),
        // A body in no accepted content type is a bad request like any other malformed body.
        Err(e) if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => Ok(error(
            &path,
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidMessage,
            e.to_string(),
        )),
        Err(e) if e.status().is_client_error() => Ok(error(
            &path,
            e.status(),
            ErrorCode::InvalidMessage,
            e.to_string(),
        )),
        Err(e) => Err(e),
    }
}

/// Bodies are bounded on every protocol. A declared length over `limit` is refused before a
/// byte is read; HTTP/1.1 chunked bodies of unknown length are refused; a body without a
/// declared length (HTTP/2 needs none) is read up to `limit` and refused past it.
async fn bound_body(req: &mut Request, path: &str, limit: usize) -> Result<(), Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = |n: String| {
        error(
            path,
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::DocumentTooLarge,
            format!("the request body has {n} bytes; the limit is {limit}"),
        )
    };
    match declared {
        Some(n) if n > limit => Err(too_large(n.to_string())),
        Some(_) => Ok(()),
        None if req.headers().contains_key(header::TRANSFER_ENCODING) => Err(error(
            path,
            StatusCode::LENGTH_REQUIRED,
            ErrorCode::InvalidMessage,
            "send a Content-Length: bodies of unknown length are refused".into(),
        )),
        None => {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            let read = req
                .take_body()
                .into_async_read()
                .take(limit as u64 + 1)
                .read_to_end(&mut buf)
                .await;
            if let Err(e) = read {
                return Err(error(
                    path,
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidMessage,
                    format!("cannot read the request body: {e}"),
                ));
            }
            if buf.len() > limit {
                return Err(too_large(format!("more than {limit}")));
            }
            req.set_body(buf);
            Ok(())
        }
    }
}
