//! The route table: for every path the server answers, its bounded metric label, the
//! methods it allows (the `Allow` header of a 405) and the shape its errors take. The
//! metrics middleware and the guard both read it, so they cannot disagree.

/// How a route's errors look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{code, message, retryable}` (the REST routes).
    Rest,
    /// OpenAI's `{error: {message, type, code, param}}`.
    OpenAi,
    /// Not a JSON route (pages, probes, the WebSocket upgrade).
    Plain,
}

/// How a path is matched.
#[derive(Debug, Clone, Copy)]
enum Path {
    Exact(&'static str),
    Prefix(&'static str),
}

/// One route of the server.
#[derive(Debug, Clone, Copy)]
pub struct RouteInfo {
    path: Path,
    /// The metric label (no raw path is ever a label).
    pub label: &'static str,
    pub methods: &'static str,
    pub shape: ErrorShape,
}

const fn route(
    path: Path,
    label: &'static str,
    methods: &'static str,
    shape: ErrorShape,
) -> RouteInfo {
    RouteInfo {
        path,
        label,
        methods,
        shape,
    }
}

use ErrorShape::{OpenAi, Plain, Rest};
use Path::{Exact, Prefix};

/// Every route, first match wins (exact paths before the prefixes they share).
const ROUTES: &[RouteInfo] = &[
    route(Exact("/v1/ws"), "/v1/ws", "GET", Plain),
    route(Exact("/v1/search"), "/v1/search", "POST", Rest),
    route(Exact("/v1/documents"), "/v1/documents", "GET, POST", Rest),
    route(
        Prefix("/v1/documents/"),
        "/v1/documents/{id}",
        "GET, DELETE",
        Rest,
    ),
    route(
        Exact("/v1/chat/completions"),
        "/v1/chat/completions",
        "POST",
        OpenAi,
    ),
    route(Exact("/v1/models"), "/v1/models", "GET", OpenAi),
    route(Prefix("/v1/rooms/"), "/v1/rooms/{room}/events", "GET", Rest),
    route(Exact("/v1/usage"), "/v1/usage", "GET", Rest),
    route(Exact("/"), "/", "GET", Plain),
    route(Prefix("/static/"), "/static", "GET", Plain),
    route(Exact("/healthz"), "/healthz", "GET", Plain),
    route(Exact("/readyz"), "/readyz", "GET", Plain),
    route(Exact("/metrics"), "/metrics", "GET", Plain),
    route(Exact("/openapi.json"), "/openapi.json", "GET", Plain),
    route(Prefix("/docs"), "/docs", "GET", Plain),
];

/// Anything else: counted as `other`, errors in the REST shape.
const OTHER: RouteInfo = route(Exact(""), "other", "GET", Rest);

/// The route serving `path`.
pub fn lookup(path: &str) -> &'static RouteInfo {
    ROUTES
        .iter()
        .find(|r| match r.path {
            Exact(p) => path == p,
            Prefix(p) => path.starts_with(p),
        })
        .unwrap_or(&OTHER)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_paths_never_leak() {
        assert_eq!(lookup("/v1/documents/abc-123").label, "/v1/documents/{id}");
        assert_eq!(
            lookup("/v1/rooms/secret-room/events").label,
            "/v1/rooms/{room}/events"
        );
        assert_eq!(lookup("/v1/documents").label, "/v1/documents");
        assert_eq!(lookup("/nope/../etc/passwd").label, "other");
        assert_eq!(lookup("/static/app.js").label, "/static");
    }

    #[test]
    fn shapes_and_methods_come_from_the_table() {
        assert_eq!(lookup("/v1/chat/completions").shape, ErrorShape::OpenAi);
        assert_eq!(lookup("/v1/models").shape, ErrorShape::OpenAi);
        assert_eq!(lookup("/v1/search").shape, ErrorShape::Rest);
        assert_eq!(lookup("/v1/documents").methods, "GET, POST");
        assert_eq!(lookup("/v1/documents/x").methods, "GET, DELETE");
    }

    /// Every path of the OpenAPI spec has its own entry (a new route must be added here).
    #[test]
    fn every_documented_path_is_in_the_table() {
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/openapi.json")).unwrap();
        let paths = spec["paths"].as_object().unwrap();
        assert!(!paths.is_empty());
        for path in paths.keys() {
            let concrete = path.replace('{', "x").replace('}', "");
            assert_ne!(
                lookup(&concrete).label,
                "other",
                "{path} is not in the route table"
            );
        }
    }
}
