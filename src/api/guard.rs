//! Around the REST routes: refuse oversize or unsized bodies before anything is read, and give
//! every error that happens before a handler (malformed JSON, a missing multipart field, a
//! wrong method) the route's own error shape — OpenAI's for `/v1/chat/completions`.

use std::sync::Arc;

use poem::http::{Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::error::ErrorCode;

/// The methods each REST path answers (for the `Allow` header of a 405).
fn allowed(path: &str) -> &'static str {
    match path {
        "/v1/documents" => "GET, POST",
        p if p.starts_with("/v1/documents/") => "GET, DELETE",
        "/v1/search" | "/v1/chat/completions" => "POST",
        _ => "GET",
    }
}

/// The route's own error body (the REST `ApiError`, or OpenAI's shape) with `status`.
fn error(path: &str, status: StatusCode, code: ErrorCode, message: String) -> Response {
    let mut resp = if path == "/v1/chat/completions" {
        poem_openapi::payload::Json(super::openai::OpenAiError {
            error: super::openai::body(code, message, None),
        })
        .into_response()
    } else {
        super::rest::ApiError::new(code, message).into_response()
    };
    resp.set_status(status);
    if status == StatusCode::METHOD_NOT_ALLOWED
        && let Ok(v) = allowed(path).parse()
    {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

pub async fn guard<E: Endpoint>(ep: Arc<E>, req: Request, limit: usize) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    if req.method() == Method::POST {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match declared {
            Some(n) if n > limit => {
                return Ok(error(
                    &path,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::DocumentTooLarge,
                    format!("the request body has {n} bytes; the limit is {limit}"),
                ));
            }
            None if req.headers().contains_key(header::TRANSFER_ENCODING) => {
                return Ok(error(
                    &path,
                    StatusCode::LENGTH_REQUIRED,
                    ErrorCode::InvalidMessage,
                    "send a Content-Length: bodies of unknown length are refused".into(),
                ));
            }
            _ => {}
        }
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
