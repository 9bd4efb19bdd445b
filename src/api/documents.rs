//! Document routes: upload (multipart file or JSON text), list, status, delete. Thin: limits
//! and mapping only; the pipeline lives in `ingest`.

use std::time::Duration;

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::multipart::Upload;
use poem_openapi::{ApiRequest, ApiResponse, Multipart, Object, OpenApi};
use tokio::io::AsyncReadExt;
use tracing::Instrument as _;

use super::auth::ApiAuth;
use super::rest::{ApiError, Fails, fails, failure};
use super::strict::Str;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ErrorCode;
use crate::ingest::{DocStatus, DocumentRecord, IngestError, Ingestor};

/// How long `?wait=true` waits for a job to finish.
const WAIT_LIMIT: Duration = Duration::from_secs(300);

/// A document as the API shows it.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct DocumentInfo {
    /// Stable per tenant and name: uploading a file of the same name again replaces it.
    pub id: String,
    pub name: String,
    /// From the document itself (`<title>`, first `# heading`) or else its name.
    pub title: String,
    /// text, markdown, html or pdf (decided by the bytes).
    pub kind: String,
    pub bytes: u64,
    pub sha256: String,
    pub version: u64,
    /// queued → parsing → embedding → indexed | failed
    pub status: String,
    /// The version searchable now, if any.
    pub live_version: Option<u64>,
    /// Chunks of the live version.
    pub chunks: u32,
    /// Progress of the running job: chunks embedded of chunks_total.
    pub chunks_total: u32,
    pub chunks_done: u32,
    /// Why the last job failed.
    pub error: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl From<DocumentRecord> for DocumentInfo {
    fn from(r: DocumentRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            title: r.title,
            kind: r.kind.as_str().into(),
            bytes: r.bytes,
            sha256: r.sha256,
            version: r.version,
            status: r.status.as_str().into(),
            live_version: r.live_version,
            chunks: r.chunks,
            chunks_total: r.chunks_total,
            chunks_done: r.chunks_done,
            error: r.error,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }
}

#[derive(Debug, Object)]
pub struct DocumentList {
    pub documents: Vec<DocumentInfo>,
}

#[derive(Debug, Object)]
pub struct TextDocument {
    /// The document's name (and title); the same name again makes a new version.
    pub title: Str,
    /// The text (not only whitespace).
    #[oai(validator(pattern = r"\S"))]
    pub text: Str,
}

#[derive(Debug, Multipart)]
pub struct UploadForm {
    /// The file: PDF, HTML, Markdown or plain UTF-8 text (checked by content).
    pub file: Upload,
    /// Name to store it under (default: the file name).
    pub name: Option<String>,
}

#[derive(Debug, ApiRequest)]
pub enum UploadRequest {
    Json(Json<TextDocument>),
    Multipart(UploadForm),
}

#[derive(ApiResponse)]
pub enum UploadResponse {
    /// Indexed already: the same bytes were uploaded before, or `wait=true` saw the job end.
    #[oai(status = 200)]
    Done(Json<DocumentInfo>),
    /// Queued; follow `GET /v1/documents/{id}` for progress.
    #[oai(status = 202)]
    Accepted(Json<DocumentInfo>),
    /// Missing file or empty name.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// Over `ingest.max_upload_bytes`.
    #[oai(status = 413)]
    TooLarge(Json<ApiError>),
    /// Not PDF, HTML, Markdown or UTF-8 text.
    #[oai(status = 415)]
    Unsupported(Json<ApiError>),
    /// `wait=true` and the document could not be read (corrupt or encrypted PDF, no text).
    #[oai(status = 422)]
    Unreadable(Json<ApiError>),
    /// Retrieval is disabled, or the ingestion queue is full.
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

fails!(UploadResponse {
    400 => BadRequest,
    401 => Unauthorized,
    413 => TooLarge,
    415 => Unsupported,
    422 => Unreadable,
    503 => Unavailable,
});

#[derive(ApiResponse)]
pub enum DocumentResponse {
    #[oai(status = 200)]
    Ok(Json<DocumentInfo>),
    /// No such document for this tenant.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// Retrieval is disabled or the store is failing.
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

fails!(DocumentResponse {
    401 => Unauthorized,
    404 => NotFound,
    503 => Unavailable,
});

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<DocumentList>),
    /// Retrieval is disabled.
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

fails!(ListResponse {
    401 => Unauthorized,
    503 => Unavailable,
});

/// The response for an ingestion error, by the one code → status mapping.
fn failed<R: Fails>(e: &IngestError) -> R {
    failure(ErrorCode::from(e), e.to_string())
}

fn disabled<R: Fails>() -> R {
    failure(
        ErrorCode::RetrievalUnavailable,
        "retrieval is disabled on this server (retrieval.enabled = false)",
    )
}

/// Document routes.
pub struct DocumentsApi {
    pub state: AppState,
}

impl DocumentsApi {
    /// Takes an upload and answers once it is queued, known, or (with `wait`) indexed.
    async fn receive(
        &self,
        principal: &Principal,
        body: UploadRequest,
        wait: Option<bool>,
    ) -> UploadResponse {
        let Some(ing) = self.ingest() else {
            return disabled();
        };
        let limit = self.state.config.ingest.max_upload_bytes;
        let (name, content_type, bytes) = match body {
            UploadRequest::Json(Json(doc)) => (
                doc.title.0,
                Some("text/plain".to_string()),
                doc.text.0.into_bytes(),
            ),
            UploadRequest::Multipart(form) => {
                let name = form
                    .name
                    .or_else(|| form.file.file_name().map(str::to_string))
                    .unwrap_or_default();
                let ct = form.file.content_type().map(str::to_string);
                match self.read_upload(form.file, limit).await {
                    Ok(b) => (name, ct, b),
                    Err(e) => return failed(&e),
                }
            }
        };
        let tenant = &*principal.tenant;
        // The same bytes may already be indexed (200), or still on their way (202, or wait).
        let record = match ing
            .submit(tenant, &name, content_type.as_deref(), bytes)
            .await
        {
            Ok(r) => r,
            Err(e) => return failed(&e),
        };
        let record = if wait == Some(true) && !record.status.is_final() {
            match ing.wait(tenant, &record.id, WAIT_LIMIT).await {
                Ok(Some(r)) => r,
                Ok(None) => return failed(&IngestError::Cancelled),
                Err(e) => return failed(&e),
            }
        } else {
            record
        };
        match record.status {
            DocStatus::Indexed => UploadResponse::Done(Json(record.into())),
            DocStatus::Failed if wait == Some(true) => failure(
                ErrorCode::DocumentUnreadable,
                record.error.unwrap_or_else(|| "ingestion failed".into()),
            ),
            _ => UploadResponse::Accepted(Json(record.into())),
        }
    }

    fn ingest(&self) -> Option<&Ingestor> {
        self.state.ingest.as_deref()
    }

    /// Reads an upload, refusing it as soon as it passes the limit.
    async fn read_upload(&self, file: Upload, limit: usize) -> Result<Vec<u8>, IngestError> {
        if file.size() > limit {
            return Err(IngestError::TooLarge {
                bytes: file.size(),
                limit,
            });
        }
        let mut buf = Vec::with_capacity(file.size());
        file.into_async_read()
            .take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| IngestError::Internal(format!("cannot read the upload: {e}")))?;
        if buf.len() > limit {
            return Err(IngestError::TooLarge {
                bytes: buf.len(),
                limit,
            });
        }
        Ok(buf)
    }
}

#[OpenApi]
impl DocumentsApi {
    /// Upload a document (multipart `file`, or JSON `{title, text}`). It is parsed, chunked,
    /// embedded and indexed in the background; `wait=true` answers when that is done.
    #[oai(path = "/v1/documents", method = "post")]
    async fn upload(
        &self,
        http: &poem::Request,
        _auth: ApiAuth,
        principal: Data<&Principal>,
        body: UploadRequest,
        wait: Query<Option<bool>>,
    ) -> UploadResponse {
        // The upload's trace: this request, then its job's phases (see ingest/jobs.rs).
        let span = tracing::info_span!("upload");
        if let Some(tp) = super::trace_of(http.headers()) {
            tp.adopt(&span);
        }
        self.receive(principal.0, body, wait.0)
            .instrument(span)
            .await
    }

    /// The tenant's documents, newest first.
    #[oai(path = "/v1/documents", method = "get")]
    async fn list(&self, _auth: ApiAuth, principal: Data<&Principal>) -> ListResponse {
        let Some(ing) = self.ingest() else {
            return disabled();
        };
        match ing.list(&principal.0.tenant).await {
            Ok(all) => ListResponse::Ok(Json(DocumentList {
                documents: all.into_iter().map(Into::into).collect(),
            })),
            Err(e) => failed(&e),
        }
    }

    /// One document: status, progress and the reason of a failure.
    #[oai(path = "/v1/documents/:id", method = "get")]
    async fn get(
        &self,
        _auth: ApiAuth,
        principal: Data<&Principal>,
        id: Path<String>,
    ) -> DocumentResponse {
        let Some(ing) = self.ingest() else {
            return disabled();
        };
        match ing.get(&principal.0.tenant, &id.0).await {
            Ok(Some(r)) => DocumentResponse::Ok(Json(r.into())),
            Ok(None) => failed(&IngestError::NotFound),
            Err(e) => failed(&e),
        }
    }

    /// Delete a document and every chunk of it (a running job is cancelled).
    #[oai(path = "/v1/documents/:id", method = "delete")]
    async fn delete(
        &self,
        _auth: ApiAuth,
        principal: Data<&Principal>,
        id: Path<String>,
    ) -> DocumentResponse {
        let Some(ing) = self.ingest() else {
            return disabled();
        };
        match ing.delete(&principal.0.tenant, &id.0).await {
            Ok(r) => DocumentResponse::Ok(Json(r.into())),
            Err(e) => failed(&e),
        }
    }
}
