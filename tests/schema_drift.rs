//! The checked-in JSON Schemas must match the Rust protocol types.
//! Regenerate with `cargo run -- schema --out schemas`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn checked_in_schemas_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for (name, generated) in confab::protocol::schemas() {
        let on_disk = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("schemas/{name} missing ({e}); run `cargo run -- schema`"));
        assert!(
            on_disk == generated,
            "schemas/{name} drifted from the protocol types; run `cargo run -- schema --out schemas`"
        );
    }
}

#[test]
fn checked_in_openapi_matches_the_routes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json");
    let on_disk = std::fs::read_to_string(&path).expect("schemas/openapi.json");
    let generated = confab::api::openapi_json().unwrap();
    assert!(
        on_disk == generated,
        "schemas/openapi.json drifted from the routes; run `cargo run -- schema --out schemas`"
    );
    let spec: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/v1/search",
        "/v1/documents",
        "/v1/documents/{id}",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/rooms/{room}/events",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
}

#[test]
fn schemas_cover_every_message_type() {
    let all: String = confab::protocol::schemas()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    for ty in [
        "join", "prompt", "cancel", "typing", "ping", "leave", "welcome", "presence", "message",
        "start", "delta", "tool", "metrics", "end", "error", "resync", "pong",
    ] {
        assert!(
            all.contains(&format!("\"const\": \"{ty}\"")),
            "{ty} missing from schemas"
        );
    }
}
