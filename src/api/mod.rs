//! HTTP routes: the WebSocket upgrade, health probes and the OpenAPI-described REST routes.
//! Thin: all logic lives in the core.

pub mod auth;
pub mod documents;
pub mod follow;
mod guard;
pub mod openai;
pub mod rest;
pub mod routes;
mod strict;
pub mod usage;

use poem::http::StatusCode;
use poem::web::websocket::{WebSocket, WebSocketConfig};
use poem::web::{Data, Json};
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler};

use crate::app::AppState;
use crate::ws::{Caller, serve_session};

/// The REST routes, together.
pub type RestApis = (
    rest::RetrievalApi,
    documents::DocumentsApi,
    openai::OpenAiApi,
    follow::FollowApi,
    usage::UsageApi,
);

/// The OpenAPI service of the REST routes.
pub fn openapi(state: AppState) -> poem_openapi::OpenApiService<RestApis, ()> {
    poem_openapi::OpenApiService::new(
        (
            rest::RetrievalApi {
                state: state.clone(),
            },
            documents::DocumentsApi {
                state: state.clone(),
            },
            openai::OpenAiApi {
                state: state.clone(),
            },
            follow::FollowApi {
                state: state.clone(),
            },
            usage::UsageApi { state },
        ),
        "confab",
        env!("CARGO_PKG_VERSION"),
    )
}

/// The OpenAPI document of every HTTP route, as checked in at `schemas/openapi.json` (built
/// from a default config: the routes do not depend on it). Call it outside a Tokio runtime:
/// it runs a short-lived one, because the application state starts background tasks.
pub fn openapi_json() -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut config = crate::Config::default();
        config.auth.dev_mode = true;
        config.finalize().map_err(|e| e.to_string())?;
        let models = crate::chat::chain::Models::from_config(&config).map_err(|e| e.to_string())?;
        let life = std::sync::Arc::new(crate::lifecycle::Lifecycle::default());
        let auth = crate::auth::Authenticator::new(&config.auth).map_err(|e| e.to_string())?;
        let services = crate::app::Services::default();
        let state = AppState::new(
            config,
            models,
            services,
            life.clone(),
            std::sync::Arc::new(auth),
        );
        life.background.cancel();
        let mut json = openapi(state).spec();
        json.push('\n');
        Ok(json)
    })
}

/// All routes with the state attached.
pub fn routes(state: AppState) -> impl poem::Endpoint {
    let api = openapi(state.clone());
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    // Upload bodies are refused by their declared length before a byte is spooled; the
    // multipart framing gets 64 KiB on top of the document limit.
    let body_limit = state.config.ingest.max_upload_bytes + 64 * 1024;
    Route::new()
        .nest_no_strip(
            "/v1",
            api.around(move |ep, req| guard::guard(ep, req, body_limit)),
        )
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .at("/", get(page))
        .at("/static/app.js", get(script))
        .at("/static/app.css", get(style))
        .at("/v1/ws", get(ws_upgrade))
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .around(|ep, req| async move {
            let route = routes::lookup(req.uri().path()).label;
            let t0 = std::time::Instant::now();
            let resp = ep.get_response(req).await;
            crate::metrics::http_request(route, resp.status().as_u16(), t0.elapsed());
            Ok(resp)
        })
        .data(state)
}

/// The browser chat page: plain files compiled in, no build step.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
        .body(body)
}

#[handler]
fn page() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    )
}

#[handler]
fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    )
}

#[handler]
fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("../../web/app.css"))
}

#[handler]
fn metrics(Data(state): Data<&AppState>) -> Response {
    match &state.metrics {
        Some(h) => Response::builder()
            .content_type("text/plain; version=0.0.4")
            .body(crate::metrics::render(h)),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response(),
    }
}

/// The socket layer's frame cap, as a multiple of `ws.max_frame_bytes`.
pub const HARD_FRAME_FACTOR: usize = 4;

/// `?room=NAME` on the upgrade URL (what the ingress hashes on when routing by room).
#[derive(serde::Deserialize)]
struct WsParams {
    room: Option<String>,
}

#[handler]
async fn ws_upgrade(
    req: &poem::Request,
    ws: WebSocket,
    Data(state): Data<&AppState>,
    poem::web::Query(params): poem::web::Query<WsParams>,
) -> Response {
    if state.life.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // Authenticated before the upgrade: a refused client gets an HTTP status it can read,
    // not a socket that opens and closes.
    let path = req.uri().path();
    let (principal, key) = match state.auth.websocket(req.headers()) {
        Ok(c) => (c.principal, c.key),
        Err(e) => return guard::refused(path, &e),
    };
    if let Err(e) = state.limits.request(&principal).await {
        return guard::limited(path, &e);
    }
    let permit = match state.limits.connect(&principal).await {
        Ok(p) => p,
        Err(e) => return guard::limited(path, &e),
    };
    let pinned = params
        .room
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if state.config.ws.room_routing && pinned.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "connect to /v1/ws?room=NAME: rooms are routed to replicas by name",
        )
            .into_response();
    }
    let pinned = pinned.filter(|_| state.config.ws.room_routing);
    // Frames up to the configured limit are handled by the session (an error event for
    // oversize ones); the socket layer stops anything far beyond it without buffering it.
    let max = state
        .config
        .ws
        .max_frame_bytes
        .saturating_mul(HARD_FRAME_FACTOR);
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(max);
    cfg.max_frame_size = Some(max);
    cfg.read_buffer_size = state.config.ws.read_buffer_bytes;
    let state = state.clone();
    let trace = trace_of(req.headers());
    ws.config(cfg)
        .protocols([crate::auth::WS_PROTOCOL])
        .on_upgrade(move |socket| {
            let tracker = state.life.sessions.clone();
            let who = Caller {
                principal,
                permit,
                key,
                trace,
            };
            tracker.track_future(serve_session(socket, state, pinned, who))
        })
        .into_response()
}

/// The W3C trace context a request came with (ignored when malformed).
pub(crate) fn trace_of(headers: &poem::http::HeaderMap) -> Option<crate::telemetry::TraceParent> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    crate::telemetry::TraceParent::from_headers(get("traceparent"), get("tracestate"))
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
fn readyz(Data(state): Data<&AppState>) -> Response {
    let draining = state.life.is_draining();
    // Upstreams are detail, not readiness: the chain still answers (extractive last).
    let upstreams: serde_json::Map<String, serde_json::Value> = state
        .upstreams
        .snapshot()
        .into_iter()
        .map(|(name, p)| {
            let breaker = state.engine.breaker_state(&name);
            let v = serde_json::json!({
                "ok": p.ok, "detail": p.detail, "checked_ms": p.checked_ms, "breaker": breaker,
            });
            (name, v)
        })
        .collect();
    // Cluster mode: a node that cannot reach the shared store cannot open rooms or take
    // prompts; it says so (and recovers by itself when the store is back).
    let cluster = state
        .cluster
        .as_ref()
        .map(|c| serde_json::json!({"backend": "redis", "up": c.is_up(), "node": c.node}));
    let store_down = state.cluster.as_ref().is_some_and(|c| !c.is_up());
    let ready = !draining && !store_down;
    let body = Json(serde_json::json!({
        "ready": ready,
        "draining": draining,
        "rooms": state.rooms.len(),
        "upstreams": upstreams,
        "cluster": cluster,
    }));
    if !ready {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else {
        body.into_response()
    }
}
