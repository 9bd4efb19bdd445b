//! Keys fail closed: revoking a key (removing it from its keys file) closes the WebSocket
//! sessions opened with it (close code 4003); a keys file that disappears revokes all of its
//! keys; one key listed for two holders refuses to load, naming both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use confab::config::TenantConfig;
use confab_loadtest::mock::Behavior;
use serde_json::json;

use common::{Client, TestServer};

const ANN: &str = "cfk_ann_0123456789abcdef";
const AMY: &str = "cfk_amy_0123456789abcdef";

fn keys_file(path: &std::path::Path, holders: &[(&str, &str)]) {
    let lines: Vec<String> = holders
        .iter()
        .map(|(user, key)| format!("{user} {}", confab::auth::keys::hash_text(key)))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn connect(srv: &TestServer, key: &str) -> Client {
    let auth = format!("Bearer {key}");
    Client::connect_with(&srv.ws_url(), &[("authorization", &auth)])
        .await
        .unwrap()
}

async fn status(srv: &TestServer, key: &str) -> u16 {
    reqwest::Client::new()
        .get(srv.http("/v1/usage"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn revoked_keys_close_their_sessions_and_a_vanished_file_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.keys");
    keys_file(&file, &[("ann", ANN), ("amy", AMY)]);
    let f = file.clone();
    let srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| {
        c.auth.dev_mode = false;
        c.auth.reload_ms = 100;
        c.auth.tenants.insert(
            "acme".into(),
            TenantConfig {
                keys_file: Some(f),
                ..TenantConfig::default()
            },
        );
    })
    .await;
    let mut ann = connect(&srv, ANN).await;
    ann.join("general", "ann").await;
    let mut amy = connect(&srv, AMY).await;
    amy.join("general", "amy").await;

    // Ann's key is taken out of the file: her session is closed, and says why.
    let t0 = Instant::now();
    keys_file(&file, &[("amy", AMY)]);
    let (code, reason) = ann.close_frame().await;
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(status(&srv, ANN).await, 401);
    // Amy's session is untouched.
    amy.send(json!({"type": "ping", "nonce": "still"})).await;
    let pong = amy.until_type("pong").await;
    assert_eq!(pong.last().unwrap()["nonce"], "still");
    assert_eq!(status(&srv, AMY).await, 200);

    // The file disappears: its keys are revoked (fail closed), not kept.
    std::fs::remove_file(&file).unwrap();
    let (code, _) = amy.close_frame().await;
    assert_eq!(code, 4003);
    assert_eq!(status(&srv, AMY).await, 401);
}

#[tokio::test]
async fn one_key_for_two_holders_refuses_to_start() {
    let mock = confab_loadtest::mock::MockUpstream::start(0, Behavior::text(&["ok"]))
        .await
        .unwrap();
    let cfg = common::config(&mock, |c| {
        common::tenant(c, "acme", &[("ann", ANN)]);
        common::tenant(c, "beta", &[("bob", ANN)]);
    });
    let err = match confab::run(cfg, tokio_util::sync::CancellationToken::new()).await {
        Ok(_) => panic!("started with one key for two holders"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("acme/ann") && err.contains("beta/bob"),
        "{err}"
    );
}
