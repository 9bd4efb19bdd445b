//! Tenancy: API keys at every edge, and a property test that tries random cross-tenant
//! accesses (documents, search, rooms over WebSocket and SSE, the answer cache, usage) and
//! counts anything of one tenant that reaches another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Client, TestServer, tenant, with_retrieval};
use confab_loadtest::mock::Behavior;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};

const TENANTS: [&str; 3] = ["acme", "beta", "gamma"];
const ROOM: &str = "lobby";
const SHARED_QUESTION: &str = "What does the shared handbook say?";

fn key(tenant: &str, user: usize) -> String {
    format!("key-{tenant}-{user}")
}

/// A string only tenant `t`'s data contains.
fn marker(t: &str) -> String {
    format!("MARK{t}ZZ")
}

struct Fixture {
    _dir: tempfile::TempDir,
    srv: TestServer,
    http: reqwest::Client,
    doc_ids: Vec<String>,
}

impl Fixture {
    fn req(&self, m: reqwest::Method, path: &str, t: usize) -> reqwest::RequestBuilder {
        self.http
            .request(m, self.srv.http(path))
            .bearer_auth(key(TENANTS[t], 0))
    }

    /// Whatever `actor` received that belongs to another tenant.
    fn leaks(&self, actor: usize, seen: &str) -> Vec<String> {
        (0..TENANTS.len())
            .filter(|&o| o != actor)
            .flat_map(|o| [marker(TENANTS[o]), self.doc_ids[o].clone()])
            .filter(|s| seen.contains(s.as_str()))
            .collect()
    }
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["fresh ", "answer"]), move |c| {
        with_retrieval(c, &p);
        // A closed SSE follower is noticed at the room's next event (or keep-alive); this
        // test follows thousands of times in a quiet room.
        c.rooms.max_members = 10_000;
        // Each tenant's one WebSocket joins thousands of times here (fairness has its own
        // suite).
        c.rooms.opens_per_connection_per_min = 1_000_000;
        for t in TENANTS {
            tenant(c, t, &[("u0", &key(t, 0)), ("u1", &key(t, 1))]);
        }
    })
    .await;
    let http = reqwest::Client::new();
    let mut doc_ids = Vec::new();
    for t in TENANTS {
        // A document, a room conversation and a cached answer, each carrying the marker.
        let r = http
            .post(srv.http("/v1/documents?wait=true"))
            .bearer_auth(key(t, 0))
            .json(&json!({"title": format!("{t} handbook"),
                "text": format!("The {t} vault code is {}. Orchids in the {t} greenhouse are watered on Tuesdays.", marker(t))}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        doc_ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );

        let url = srv.ws_url();
        let mut c =
            Client::connect_with(&url, &[("authorization", &format!("Bearer {}", key(t, 1)))])
                .await
                .unwrap();
        c.join(ROOM, "setup").await;
        c.send(json!({"type": "prompt", "text": format!("Tell me about {}", marker(t))}))
            .await;
        c.until_end().await;

        srv.mock.push(Behavior::text(&[
            &format!("ANSWER-{} ", marker(t)),
            "done.",
        ]));
        let r = http
            .post(srv.http("/v1/chat/completions"))
            .bearer_auth(key(t, 0))
            .json(&json!({"model": "default", "messages": [{"role": "user", "content": SHARED_QUESTION}]}))
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        assert!(body.contains(&marker(t)), "{t} got its own answer: {body}");
    }
    Fixture {
        _dir: dir,
        srv,
        http,
        doc_ids,
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    GetDoc,
    DeleteDoc,
    ListDocs,
    Search(u8),
    Follow,
    Join,
    CachedAsk,
    Usage,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::GetDoc),
        Just(Op::DeleteDoc),
        Just(Op::ListDocs),
        (0u8..3).prop_map(Op::Search),
        Just(Op::Follow),
        Just(Op::Join),
        Just(Op::CachedAsk),
        Just(Op::Usage),
    ]
}

/// One access by `actor` aimed at `target`'s data; returns what leaked.
async fn access(
    f: &Fixture,
    ws: &mut [Client],
    actor: usize,
    target: usize,
    op: Op,
) -> Vec<String> {
    use reqwest::Method;
    let tgt = TENANTS[target];
    let seen = match op {
        Op::GetDoc | Op::DeleteDoc => {
            let m = if matches!(op, Op::GetDoc) {
                Method::GET
            } else {
                Method::DELETE
            };
            let r = f
                .req(m, &format!("/v1/documents/{}", f.doc_ids[target]), actor)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            // Not 403: another tenant's document does not exist, as far as this key knows.
            assert_eq!(status, 404, "{op:?} of {tgt}'s document: {body}");
            body
        }
        Op::ListDocs => f
            .req(Method::GET, "/v1/documents", actor)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        Op::Search(m) => {
            let mode = ["dense", "sparse", "hybrid"][m as usize];
            let query = format!("{tgt} vault code {}", marker(tgt));
            f.req(Method::POST, "/v1/search", actor)
                .json(&json!({"query": query, "mode": mode, "top_k": 10, "score_floor": -1.0}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
        Op::Follow => {
            // The room's replay from the start, read until the actor's own marker shows.
            let mut resp = f
                .req(
                    Method::GET,
                    &format!("/v1/rooms/{ROOM}/events?last_seq=0"),
                    actor,
                )
                .send()
                .await
                .unwrap();
            let own = marker(TENANTS[actor]);
            let mut seen = String::new();
            while !seen.contains(&own) {
                match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
                    Ok(Ok(Some(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
                    _ => panic!("follow ended before the actor's own history: {seen}"),
                }
            }
            seen
        }
        Op::Join => {
            let c = &mut ws[actor];
            c.send(json!({"type": "leave"})).await;
            // A fresh join gets the room's snapshot: members and history.
            c.send(json!({"type": "join", "room": ROOM, "name": "prop"}))
                .await;
            let me = c.welcome["session_id"].clone();
            let mut seen = String::new();
            loop {
                let ev = c.recv().await;
                seen.push_str(&ev.to_string());
                let mine = ev["type"] == "presence"
                    && ev["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|x| x["session_id"] == me));
                if mine {
                    break;
                }
            }
            seen
        }
        Op::CachedAsk => {
            let r = f
                .req(Method::POST, "/v1/chat/completions", actor)
                .json(&json!({"model": "default", "messages": [{"role": "user", "content": SHARED_QUESTION}]}))
                .send()
                .await
                .unwrap();
            let body = r.text().await.unwrap();
            assert!(
                body.contains(&marker(TENANTS[actor])),
                "own cached answer: {body}"
            );
            body
        }
        Op::Usage => {
            let v: Value = f
                .req(Method::GET, "/v1/usage", actor)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["tenant"], TENANTS[actor]);
            v.to_string()
        }
    };
    f.leaks(actor, &seen)
}

/// At least 10,000 random cross-tenant accesses; not one may return another tenant's data.
#[test]
fn random_cross_tenant_accesses_leak_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = rt.block_on(start());
    let ws: std::sync::Mutex<Vec<Client>> = std::sync::Mutex::new(rt.block_on(async {
        let mut v = Vec::new();
        for t in TENANTS {
            let auth = format!("Bearer {}", key(t, 1));
            v.push(
                Client::connect_with(&f.srv.ws_url(), &[("authorization", &auth)])
                    .await
                    .unwrap(),
            );
        }
        v
    }));
    let attempts = AtomicU64::new(0);
    let leaks = AtomicU64::new(0);
    let cases = 100;
    let mut runner = TestRunner::new(PropConfig {
        cases,
        failure_persistence: None,
        // One shared server: a failure is reported as found, not shrunk by rerunning.
        max_shrink_iters: 0,
        ..PropConfig::default()
    });
    let strategy = prop::collection::vec((0usize..3, 1usize..3, op()), 100);
    let result = runner.run(&strategy, |ops| {
        let mut ws = ws.lock().unwrap_or_else(|p| p.into_inner());
        rt.block_on(async {
            for (actor, offset, op) in ops {
                let target = (actor + offset) % TENANTS.len();
                attempts.fetch_add(1, Ordering::Relaxed);
                let leaked = access(&f, &mut ws, actor, target, op).await;
                if !leaked.is_empty() {
                    leaks.fetch_add(1, Ordering::Relaxed);
                    return Err(TestCaseError::fail(format!(
                        "{} did {op:?} toward {} and saw {leaked:?}",
                        TENANTS[actor], TENANTS[target]
                    )));
                }
            }
            Ok(())
        })
    });
    let (n, leaked) = (
        attempts.load(Ordering::Relaxed),
        leaks.load(Ordering::Relaxed),
    );
    println!("tenancy: {n} cross-tenant accesses, {leaked} leaks");
    result.unwrap();
    assert!(n >= 10_000, "only {n} accesses");
    assert_eq!(leaked, 0);

    // Every delete aimed at another tenant failed: each tenant still has its document.
    rt.block_on(async {
        for (t, id) in f.doc_ids.iter().enumerate() {
            let r = f
                .req(reqwest::Method::GET, &format!("/v1/documents/{id}"), t)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status().as_u16(),
                200,
                "{}'s document survived",
                TENANTS[t]
            );
        }
    });
}

#[tokio::test]
async fn keys_are_required_checked_and_rotated_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let hash = |k: &str| confab::auth::keys::hash_text(k);
    std::fs::write(&keys, format!("# acme\nann {}\n", hash("old-key"))).unwrap();
    let file = keys.clone();
    let srv = TestServer::start_with(Behavior::text(&["hi"]), move |c| {
        tenant(c, "beta", &[("bob", "beta-key")]);
        c.auth.tenants.insert(
            "acme".into(),
            confab::config::TenantConfig {
                keys_file: Some(file),
                ..Default::default()
            },
        );
        c.auth.reload_ms = 100;
        c.auth.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let http = reqwest::Client::new();
    let get = |k: Option<&str>| {
        let mut r = http.get(srv.http("/v1/models"));
        if let Some(k) = k {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let r = get(None).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["code"], "unauthorized",
        "OpenAI's error shape on its route: {v}"
    );
    let r = http.get(srv.http("/v1/documents")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
    assert_eq!(get(Some("nope")).await.unwrap().status().as_u16(), 401);
    assert_eq!(get(Some("old-key")).await.unwrap().status().as_u16(), 200);

    // Rotation: both keys for a while, then only the new one; no restart.
    std::fs::write(
        &keys,
        format!("ann {}\nann {}\n", hash("old-key"), hash("new-key")),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(Some("new-key")).await.unwrap().status().as_u16(), 200);
    assert_eq!(get(Some("old-key")).await.unwrap().status().as_u16(), 200);
    std::fs::write(&keys, format!("ann {}\n", hash("new-key"))).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(Some("old-key")).await.unwrap().status().as_u16(), 401);
    // A broken file keeps the keys in force rather than locking everyone out.
    std::fs::write(&keys, "ann not-a-hash\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(Some("new-key")).await.unwrap().status().as_u16(), 200);

    // WebSocket: refused before the upgrade without a key or from a foreign page; a
    // browser's key travels as a subprotocol.
    let url = srv.ws_url();
    assert_eq!(Client::connect_with(&url, &[]).await.err(), Some(401));
    let evil = [
        ("origin", "https://evil.example"),
        ("authorization", "Bearer beta-key"),
    ];
    assert_eq!(Client::connect_with(&url, &evil).await.err(), Some(403));
    let browser = [
        ("origin", "https://app.example.com"),
        (
            "sec-websocket-protocol",
            "confab.v1, confab.bearer.beta-key",
        ),
    ];
    let mut c = Client::connect_with(&url, &browser).await.unwrap();
    c.join("r", "bob").await;
    c.send(json!({"type": "prompt", "text": "hello"})).await;
    assert_eq!(common::answer(&c.until_end().await), "hi");
}
