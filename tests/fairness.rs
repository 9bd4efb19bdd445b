//! Fair shares of the server's rooms and connections: one tenant's join flood cannot keep
//! another tenant out, one connection cannot open rooms without bound, empty rooms give
//! their slot back promptly (and keep their log for a member who returns), and an SSE
//! follower holds a connection slot like a WebSocket session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

use common::{Client, TestServer, tenant};

const ACME: &str = "cfk_acme_key_0123456789";
const GLOBEX: &str = "cfk_globex_key_0123456789";

async fn server(tweak: impl FnOnce(&mut confab::config::Config) + Send + 'static) -> TestServer {
    TestServer::start_with(Behavior::text(&["ok"]), move |c| {
        tenant(c, "acme", &[("ann", ACME)]);
        tenant(c, "globex", &[("gus", GLOBEX)]);
        c.limits.tenant.requests_per_min = Some(100_000);
        c.limits.user.requests_per_min = Some(100_000);
        tweak(c);
    })
    .await
}

async fn connect(srv: &TestServer, key: &str) -> Client {
    let auth = format!("Bearer {key}");
    Client::connect_with(&srv.ws_url(), &[("authorization", &auth)])
        .await
        .unwrap()
}

/// Sends a join and returns the error it got, or `None` once the member is in.
async fn try_join(c: &mut Client, room: &str, last_seq: Option<u64>) -> Option<Value> {
    let mut msg = json!({"type": "join", "room": room, "name": "x"});
    if let Some(s) = last_seq {
        msg["last_seq"] = json!(s);
    }
    c.send(msg).await;
    let me = c.welcome["session_id"].clone();
    loop {
        let ev = c.recv().await;
        if ev["type"] == "error" {
            return Some(ev);
        }
        if ev["type"] == "presence"
            && ev["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|x| x["session_id"] == me))
        {
            return None;
        }
    }
}

#[tokio::test]
async fn a_join_flood_from_one_tenant_leaves_room_for_the_others() {
    let srv = server(|c| {
        c.rooms.max_rooms = 100;
        c.rooms.max_rooms_per_tenant = 20;
        c.rooms.opens_per_connection_per_min = 1_000;
        c.rooms.empty_ttl_ms = 60_000;
    })
    .await;
    let mut flood = connect(&srv, ACME).await;
    let mut refused = 0;
    for i in 0..30 {
        if let Some(e) = try_join(&mut flood, &format!("flood-{i}"), None).await {
            assert_eq!(e["code"], "too_many_rooms", "{e}");
            refused += 1;
        }
    }
    assert_eq!(refused, 10, "acme holds its share, 20 rooms, and no more");
    // Another tenant opens rooms as usual, and acme still enters a room it holds.
    let mut other = connect(&srv, GLOBEX).await;
    assert!(try_join(&mut other, "general", None).await.is_none());
    let mut again = connect(&srv, ACME).await;
    assert!(try_join(&mut again, "flood-3", None).await.is_none());
}

#[tokio::test]
async fn one_connection_opens_a_bounded_number_of_rooms_a_minute() {
    let srv = server(|c| c.rooms.opens_per_connection_per_min = 5).await;
    let mut c = connect(&srv, ACME).await;
    for i in 0..5 {
        assert!(try_join(&mut c, &format!("r{i}"), None).await.is_none());
    }
    let e = try_join(&mut c, "r5", None).await.expect("refused");
    assert_eq!(e["code"], "rate_limited", "{e}");
    assert!(e["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{e}");
    // Another connection of the same user has its own allowance.
    let mut d = connect(&srv, ACME).await;
    assert!(try_join(&mut d, "r5", None).await.is_none());
}

#[tokio::test]
async fn joins_count_against_the_request_rate() {
    let srv = server(|c| c.limits.user.requests_per_min = Some(4)).await;
    // The upgrade is one request.
    let mut c = connect(&srv, ACME).await;
    for i in 0..3 {
        assert!(try_join(&mut c, &format!("r{i}"), None).await.is_none());
    }
    let e = try_join(&mut c, "r3", None).await.expect("refused");
    assert_eq!(e["code"], "rate_limited", "{e}");
}

#[tokio::test]
async fn empty_rooms_give_their_slot_back_and_keep_their_log() {
    let srv = server(|c| {
        c.rooms.max_rooms_per_tenant = 2;
        c.rooms.empty_ttl_ms = 200;
    })
    .await;
    let mut c = connect(&srv, ACME).await;
    assert!(try_join(&mut c, "a", None).await.is_none());
    let (seen_in_a, epoch_of_a) = (c.last_seq, c.epoch.clone());
    assert!(try_join(&mut c, "b", None).await.is_none());
    let e = try_join(&mut c, "c", None)
        .await
        .expect("a is not reclaimed yet");
    assert_eq!(e["code"], "too_many_rooms");
    // `a` has been empty for longer than empty_ttl_ms: its slot is free again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(try_join(&mut c, "c", None).await.is_none());
    // Coming back to `a` resumes from its parked log: a replay, not a resync.
    let mut back = connect(&srv, ACME).await;
    back.send(json!({"type": "join", "room": "a", "name": "x", "last_seq": seen_in_a, "epoch": epoch_of_a}))
        .await;
    let first = back.recv().await;
    assert_ne!(first["type"], "resync", "{first}");
    assert_eq!(first["seq"].as_u64(), Some(seen_in_a + 1), "{first}");
}

#[tokio::test]
async fn an_sse_follower_holds_a_connection_slot() {
    let srv = server(|c| c.limits.user.ws_connections = Some(1)).await;
    let _ws = connect(&srv, ACME).await;
    let resp = reqwest::Client::new()
        .get(srv.http("/v1/rooms/general/events"))
        .header("authorization", format!("Bearer {ACME}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
}
