//! HTTP routes: the WebSocket upgrade, health probes and the OpenAPI-described REST routes.
//! Thin: all logic lives in the core.

pub mod rest;

use poem::http::StatusCode;
use poem::web::websocket::{WebSocket, WebSocketConfig};
use poem::web::{Data, Json};
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler};

use crate::app::AppState;
use crate::ws::serve_session;

/// The OpenAPI service of the REST routes.
pub fn openapi(state: AppState) -> poem_openapi::OpenApiService<rest::RetrievalApi, ()> {
    poem_openapi::OpenApiService::new(
        rest::RetrievalApi { state },
        "confab",
        env!("CARGO_PKG_VERSION"),
    )
}

/// All routes with the state attached.
pub fn routes(state: AppState) -> impl poem::Endpoint {
    let api = openapi(state.clone());
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/", api)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .at("/v1/ws", get(ws_upgrade))
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .around(|ep, req| async move {
            let path = req.uri().path().to_string();
            let t0 = std::time::Instant::now();
            let resp = ep.get_response(req).await;
            crate::metrics::http_request(&path, resp.status().as_u16(), t0.elapsed());
            Ok(resp)
        })
        .data(state)
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

#[handler]
fn ws_upgrade(ws: WebSocket, Data(state): Data<&AppState>) -> Response {
    if state.life.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
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
    let state = state.clone();
    ws.config(cfg)
        .on_upgrade(move |socket| {
            let tracker = state.life.sessions.clone();
            tracker.track_future(serve_session(socket, state))
        })
        .into_response()
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
fn readyz(Data(state): Data<&AppState>) -> Response {
    let draining = state.life.is_draining();
    let body = Json(serde_json::json!({
        "ready": !draining,
        "draining": draining,
        "rooms": state.rooms.len(),
    }));
    if draining {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else {
        body.into_response()
    }
}
