//! Collaborative rooms over real WebSockets against a scripted upstream on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, TestServer, answer, types};
use confab_loadtest::mock::Behavior;
use futures_util::SinkExt;
use serde_json::{Value, json};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn two_clients_receive_identical_ordered_turn_events() {
    let srv = TestServer::start(Behavior::text(&["Hello", ", ", "world"])).await;
    let mut a = srv.joined("r1", "alice").await;
    let mut b = srv.joined("r1", "bob").await;
    // Alice sees Bob's arrival.
    let p = a.until_type("presence").await;
    assert_eq!(p.last().unwrap()["members"].as_array().unwrap().len(), 2);

    a.send(json!({"type": "prompt", "text": "hi there", "client_msg_id": "m1"}))
        .await;
    let ea = a.until_end().await;
    let eb = b.until_end().await;
    assert_eq!(ea, eb, "both members must see byte-identical events");
    assert_eq!(
        types(&ea),
        [
            "message", "start", "delta", "delta", "delta", "metrics", "end"
        ]
    );
    assert_eq!(answer(&ea), "Hello, world");
    let turn = ea[0]["turn_id"].clone();
    assert!(turn.is_string());
    let mut prev = 0;
    for ev in &ea {
        assert_eq!(ev["room"], "r1");
        assert_eq!(ev["turn_id"], turn);
        let seq = ev["seq"].as_u64().unwrap();
        assert!(seq > prev);
        if prev != 0 {
            assert_eq!(seq, prev + 1, "room seqs are consecutive");
        }
        prev = seq;
        assert!(ev["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
    assert_eq!(ea[0]["from"]["name"], "alice");
    assert_eq!(ea[0]["client_msg_id"], "m1");
    assert_eq!(ea[1]["model"], "mock-model");
    assert_eq!(ea[1]["chain"], "default");
    assert_eq!(ea[1]["prompt_seq"], ea[0]["seq"]);
    let m = &ea[5];
    assert_eq!(m["model"], "mock-model");
    assert_eq!(m["provider"], "mock");
    assert_eq!(m["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(m["attempts"][0]["outcome"], "ok");
    assert!(m["ttft_ms"].is_u64());
    assert_eq!(m["tokens_out"], 3);
    assert_eq!(m["usage_reported"], true);
    assert_eq!(ea[6]["finish_reason"], "stop");
    assert_eq!(ea[6]["partial"], false);
}

#[tokio::test]
async fn later_turns_see_earlier_ones_as_context() {
    let srv = TestServer::start(Behavior::text(&["Paris."])).await;
    let mut a = srv.joined("ctx", "alice").await;
    a.send(json!({"type": "prompt", "text": "capital of France?"}))
        .await;
    a.until_end().await;
    a.send(json!({"type": "prompt", "text": "and its population?"}))
        .await;
    a.until_end().await;
    let reqs = srv.mock.requests();
    assert_eq!(reqs.len(), 2);
    let msgs = reqs[1]["messages"].as_array().unwrap();
    let roles: Vec<_> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(msgs[1]["content"], "alice: capital of France?");
    assert_eq!(msgs[2]["content"], "Paris.");
    assert_eq!(msgs[3]["content"], "alice: and its population?");
    assert_eq!(reqs[1]["stream"], true);
    assert_eq!(reqs[1]["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn cancel_aborts_the_upstream_and_ends_cancelled() {
    let srv = TestServer::start(Behavior::tokens(200, ms(20))).await;
    let mut a = srv.joined("c", "alice").await;
    let mut b = srv.joined("c", "bob").await;
    a.send(json!({"type": "prompt", "text": "long answer please"}))
        .await;
    let head = b.until_type("delta").await;
    let turn = head[0]["turn_id"].as_str().unwrap().to_string();
    // Anyone in the room may cancel.
    b.send(json!({"type": "cancel", "turn_id": turn})).await;
    let rest = a.until_end().await;
    let end = rest.last().unwrap();
    assert_eq!(end["finish_reason"], "cancelled");
    assert_eq!(end["partial"], true);
    assert!(answer(&rest).len() < 200 * 4, "generation stopped early");
    assert_eq!(
        srv.upstream_aborted(ms(1000)).await,
        1,
        "upstream stream was closed"
    );
    assert_eq!(srv.mock.completed(), 0);
    // Cancelling something that is not running is an error, not a crash.
    b.send(json!({"type": "cancel", "turn_id": turn})).await;
    let err = b.until_type("error").await;
    assert_eq!(err.last().unwrap()["code"], "unknown_turn");
}

#[tokio::test]
async fn turn_continues_when_the_asker_disconnects() {
    let srv = TestServer::start(Behavior::tokens(15, ms(15))).await;
    let mut a = srv.joined("d", "alice").await;
    let mut b = srv.joined("d", "bob").await;
    a.send(json!({"type": "prompt", "text": "tell me"})).await;
    a.until_type("delta").await;
    drop(a);
    let events = b.until_end().await;
    assert_eq!(events.last().unwrap()["finish_reason"], "stop");
    let text: String = (0..15).map(|i| format!("t{i} ")).collect();
    assert!(
        text.ends_with(&answer(&events)),
        "bob saw the rest of the answer"
    );
    // The finished answer is in the room's history for newcomers.
    let mut c = srv.client().await;
    c.send(json!({"type": "join", "room": "d", "name": "carol"}))
        .await;
    let sync = c.until_type("resync").await;
    let turns = sync.last().unwrap()["snapshot"]["turns"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0]["answer"], text);
    assert_eq!(turns[0]["from"]["name"], "alice");
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_events() {
    let srv = TestServer::start(Behavior::text(&["one ", "two ", "three"])).await;
    let mut a = srv.joined("res", "alice").await;
    let b = srv.joined("res", "bob").await;
    a.until_type("presence").await;
    let (b_last, b_epoch) = (b.last_seq, b.epoch.clone());
    assert!(b_epoch.is_string(), "the join's resync names the epoch");
    drop(b);
    a.send(json!({"type": "prompt", "text": "count"})).await;
    let mut seen_by_a = a.until_type("presence").await; // bob left
    seen_by_a.extend(a.until_end().await);

    let mut b2 = srv.client().await;
    b2.send(
        json!({"type": "join", "room": "res", "name": "bob", "last_seq": b_last, "epoch": b_epoch}),
    )
    .await;
    let mut replayed = Vec::new();
    for _ in 0..seen_by_a.len() {
        replayed.push(b2.recv().await);
    }
    assert_eq!(
        replayed, seen_by_a,
        "replay is exactly what was missed, byte for byte"
    );
    let first = replayed[0]["seq"].as_u64().unwrap();
    assert_eq!(first, b_last + 1);
    let after = b2.recv().await;
    assert_eq!(after["type"], "presence", "then the live stream continues");
    assert_eq!(
        after["seq"].as_u64().unwrap(),
        replayed.last().unwrap()["seq"].as_u64().unwrap() + 1
    );
}

#[tokio::test]
async fn resume_older_than_the_buffer_gets_resync() {
    let srv =
        TestServer::start_with(Behavior::tokens(10, ms(0)), |c| c.rooms.replay_events = 4).await;
    let mut a = srv.joined("old", "alice").await;
    a.send(json!({"type": "prompt", "text": "q"})).await;
    let events = a.until_end().await;
    let mut b = srv.client().await;
    b.send(json!({"type": "join", "room": "old", "name": "bob", "last_seq": 1, "epoch": a.epoch}))
        .await;
    let ev = b.recv().await;
    assert_eq!(ev["type"], "resync");
    assert_eq!(ev["seq"], events.last().unwrap()["seq"]);
    assert_eq!(ev["snapshot"]["turns"][0]["answer"], answer(&events));
    // A seq from the future is also answered with a resync, not garbage.
    let mut c = srv.client().await;
    c.send(
        json!({"type": "join", "room": "old", "name": "carol", "last_seq": 9999, "epoch": a.epoch}),
    )
    .await;
    assert_eq!(c.recv().await["type"], "resync");
}

#[tokio::test]
async fn slow_consumer_is_dropped_without_stalling_the_room() {
    let big = "x".repeat(16 * 1024);
    let tokens: Vec<String> = (0..1000).map(|_| big.clone()).collect();
    let srv = TestServer::start_with(
        Behavior::Reply {
            tokens,
            ttft: ms(0),
            gap: ms(0),
        },
        |c| c.ws.outbound_queue = 8,
    )
    .await;
    let mut slow = srv.joined("s", "sloth").await;
    let mut fast = srv.joined("s", "hare").await;
    fast.send(json!({"type": "prompt", "text": "flood"})).await;
    let events = fast.until_end().await;
    assert_eq!(events.last().unwrap()["finish_reason"], "stop");
    assert_eq!(
        answer(&events).len(),
        1000 * 16 * 1024,
        "the fast member got every delta"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "presence" && e["members"].as_array().unwrap().len() == 1),
        "the others were told the slow member left"
    );
    let (code, reason) = slow.close_frame().await;
    assert_eq!(code, 4008, "{reason}");
    let resume: u64 = reason
        .split("resume_from=")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .expect("close reason carries resume_from");
    assert!(resume <= slow.last_seq.max(resume));
    // It can come back and catch up.
    let mut back = srv.client().await;
    back.send(json!({"type": "join", "room": "s", "name": "sloth", "last_seq": resume, "epoch": slow.epoch}))
        .await;
    let first = back.recv().await;
    assert!(
        first["type"] == "resync" || first["seq"].as_u64() == Some(resume + 1),
        "{first}"
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_server_stays_up() {
    let srv = TestServer::start_with(Behavior::text(&["ok"]), |c| {
        c.ws.max_prompt_chars = 50;
        c.ws.max_frame_bytes = 1024;
    })
    .await;
    let mut other = srv.joined("calm", "bystander").await;
    let mut c = srv.client().await;
    let cases = [
        ("{not json", "bad_json"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"hello":1}"#, "unknown_type"),
        (r#"{"type":"join","name":"x"}"#, "invalid_message"),
        (r#"{"type":"join","room":"","name":"x"}"#, "invalid_message"),
        (r#"{"type":"prompt","text":"hi"}"#, "not_in_room"),
        (r#"{"type":"cancel","turn_id":"nope"}"#, "invalid_message"),
    ];
    for (frame, code) in cases {
        c.send_raw(frame).await;
        let ev = c.recv().await;
        assert_eq!(ev["type"], "error", "{frame}");
        assert_eq!(ev["code"], code, "{frame}: {ev}");
        assert_eq!(ev["retryable"], false);
        assert!(!ev["message"].as_str().unwrap().is_empty());
    }
    c.join("calm", "noisy").await;
    c.send(json!({"type": "prompt", "text": "y".repeat(51)}))
        .await;
    let ev = c.until_type("error").await;
    assert_eq!(ev.last().unwrap()["code"], "prompt_too_long");
    c.ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        vec![1, 2, 3].into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        c.until_type("error").await.last().unwrap()["code"],
        "binary_not_supported"
    );
    c.send(json!({"type": "ping", "nonce": "n1"})).await;
    let pong = c.until_type("pong").await;
    assert_eq!(
        pong.last().unwrap()["nonce"],
        "n1",
        "still served after bad input"
    );

    // Oversize frame: discarded with an error, the session goes on.
    c.send_raw(&format!(
        r#"{{"type":"prompt","text":"{}"}}"#,
        "z".repeat(2000)
    ))
    .await;
    let ev = c.until_type("error").await;
    assert_eq!(ev.last().unwrap()["code"], "frame_too_large");
    c.send(json!({"type": "ping"})).await;
    c.until_type("pong").await;
    // Far beyond the limit: the socket layer refuses it and closes with 1009.
    c.send_raw(&format!(
        r#"{{"type":"prompt","text":"{}"}}"#,
        "z".repeat(8000)
    ))
    .await;
    let (code, reason) = c.close_frame().await;
    assert_eq!(code, 1009, "{reason}");
    other
        .send(json!({"type": "prompt", "text": "still there?"}))
        .await;
    let events = other.until_end().await;
    assert_eq!(answer(&events), "ok");
    let _fresh = srv.joined("calm", "newcomer").await;
}

#[tokio::test]
async fn heartbeats_keep_live_clients_and_idle_ones_are_closed() {
    let srv = TestServer::start_with(Behavior::text(&["ok"]), |c| {
        c.ws.heartbeat_ms = 100;
        c.ws.idle_timeout_ms = 1_000;
    })
    .await;
    let mut c = srv.client().await;
    assert_eq!(c.welcome["heartbeat_ms"], 100);
    // Reading keeps answering pings with pongs: the session survives well past the timeout.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + ms(2_500);
    use futures_util::StreamExt;
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, c.ws.next()).await {
        match msg.unwrap() {
            tokio_tungstenite::tungstenite::Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 5, "got {pings} pings");
    // Stop reading (no pongs): the server closes with 4001.
    tokio::time::sleep(ms(1_800)).await;
    let (code, _) = c.close_frame().await;
    assert_eq!(code, 4001);
}

#[tokio::test]
async fn queue_limit_duplicates_and_ordering_of_many_turns() {
    let srv = TestServer::start_with(Behavior::tokens(5, ms(20)), |c| {
        c.rooms.max_queued_turns = 1
    })
    .await;
    let mut a = srv.joined("q", "alice").await;
    for i in 0..4 {
        a.send(
            json!({"type": "prompt", "text": format!("p{i}"), "client_msg_id": format!("id{i}")}),
        )
        .await;
    }
    a.send(json!({"type": "prompt", "text": "again", "client_msg_id": "id0"}))
        .await;
    let mut busy = 0;
    let mut dup = 0;
    let mut started = Vec::new();
    let mut ended = Vec::new();
    let mut accepted = Vec::new();
    while ended.len() < accepted.len() || accepted.is_empty() || busy + dup + accepted.len() < 5 {
        let ev = a.recv().await;
        match ev["type"].as_str().unwrap() {
            "message" => accepted.push(ev["turn_id"].clone()),
            "start" => {
                assert_eq!(started.len(), ended.len(), "one turn at a time");
                started.push(ev["turn_id"].clone());
            }
            "end" => ended.push(ev["turn_id"].clone()),
            "error" if ev["code"] == "room_busy" => busy += 1,
            "error" if ev["code"] == "duplicate_prompt" => dup += 1,
            _ => {}
        }
    }
    assert!(busy >= 1, "queue bound enforced");
    assert_eq!(dup, 1, "client_msg_id is idempotent");
    assert_eq!(started, accepted, "turns run in arrival order");
    assert_eq!(ended, accepted, "every accepted turn ends exactly once");
}

#[tokio::test]
async fn a_failure_after_the_first_token_ends_the_turn_and_keeps_the_partial_answer() {
    let srv = TestServer::start(Behavior::text(&["fine"])).await;
    let mut a = srv.joined("f", "alice").await;
    srv.mock.push(Behavior::Cut {
        tokens: vec!["half ".into(), "an ".into()],
        gap: ms(0),
    });
    a.send(json!({"type": "prompt", "text": "y"})).await;
    let ev = a.until_end().await;
    assert_eq!(
        types(&ev),
        [
            "message", "start", "delta", "delta", "error", "metrics", "end"
        ]
    );
    assert_eq!(answer(&ev), "half an ");
    assert_eq!(ev[4]["code"], "upstream_cut");
    assert_eq!(ev.last().unwrap()["finish_reason"], "error");
    assert_eq!(ev.last().unwrap()["partial"], true);

    // The partial answer stays in history, marked as interrupted.
    a.send(json!({"type": "prompt", "text": "z"})).await;
    let ev = a.until_end().await;
    assert_eq!(answer(&ev), "fine");
    let msgs = srv.mock.requests()[1]["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        msgs.iter()
            .any(|m| m["content"] == "half an  [answer interrupted]"),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_turns_then_closes_with_1012() {
    let mut srv = TestServer::start(Behavior::tokens(20, ms(30))).await;
    let mut a = srv.joined("g", "alice").await;
    a.send(json!({"type": "prompt", "text": "long"})).await;
    a.until_type("delta").await;
    srv.shutdown.cancel();
    let rest = a.until_end().await;
    assert_eq!(
        rest.last().unwrap()["finish_reason"],
        "stop",
        "running turn finished"
    );
    let (code, reason) = a.close_frame().await;
    assert_eq!(code, 1012);
    assert!(reason.contains("reconnect_after_ms="), "{reason}");
    tokio::time::timeout(Duration::from_secs(5), srv.running.take().unwrap().wait())
        .await
        .expect("server stops")
        .expect("clean exit");
    assert!(
        tokio_tungstenite::connect_async(srv.ws_url())
            .await
            .is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn room_routing_pins_a_connection_to_the_room_in_its_url() {
    let srv = TestServer::start_with(Behavior::text(&["ok"]), |c| c.ws.room_routing = true).await;
    // Without ?room= the upgrade is refused: the ingress could not route it.
    let Err(err) = tokio_tungstenite::connect_async(srv.ws_url()).await else {
        panic!("an upgrade without ?room= must be refused");
    };
    assert!(err.to_string().contains("400"), "{err}");
    let url = format!("{}?room=ops", srv.ws_url());
    let mut c = Client::connect(&url).await;
    c.join("ops", "alice").await;
    // Another room lives (maybe) on another replica: close with 4009 and where to reconnect.
    c.send(json!({"type": "join", "room": "sales", "name": "alice"}))
        .await;
    let (code, reason) = c.close_frame().await;
    assert_eq!(code, 4009);
    assert!(reason.contains("/v1/ws?room=sales"), "{reason}");
}

#[tokio::test]
async fn a_seq_of_another_epoch_gets_a_resync_never_that_epochs_events() {
    let srv = TestServer::start(Behavior::text(&["one", " two"])).await;
    let mut a = srv.joined("ep", "alice").await;
    a.send(json!({"type": "prompt", "text": "q"})).await;
    a.until_end().await;
    let (last, epoch) = (a.last_seq, a.epoch.clone());
    // The right epoch replays; a wrong one, or none, resyncs even though the seq exists.
    for (sent, replays) in [
        (epoch.clone(), true),
        (json!("0123456789abcdef"), false),
        (Value::Null, false),
    ] {
        let mut c = srv.client().await;
        c.send(
            json!({"type": "join", "room": "ep", "name": "c", "last_seq": last - 2, "epoch": sent}),
        )
        .await;
        let first = c.recv().await;
        assert_eq!(first["type"] != "resync", replays, "{sent}: {first}");
    }
    // A restart loses the in-memory log: the room comes back with a new epoch, and the old
    // seq resyncs into it.
    let mut srv = srv;
    srv.shutdown.cancel();
    srv.running.take().unwrap().wait().await.unwrap();
    let srv = TestServer::start(Behavior::text(&["again"])).await;
    let mut b = srv.joined("ep", "bob").await;
    b.send(json!({"type": "prompt", "text": "q2"})).await;
    b.until_end().await;
    let mut back = srv.client().await;
    back.send(
        json!({"type": "join", "room": "ep", "name": "alice", "last_seq": 1, "epoch": epoch}),
    )
    .await;
    let first = back.recv().await;
    assert_eq!(first["type"], "resync", "{first}");
    assert_ne!(first["snapshot"]["epoch"], epoch);
}
