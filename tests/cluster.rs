//! Cluster mode end to end: real `confab` processes sharing one real `redis-server`.
//! Members on different nodes see the same events (same seqs, same bytes); a client resumes
//! on another node with exactly what it missed; a node killed mid-turn has its turn ended
//! (`node_lost`) by another within the lease and the queue moves on, no turn running twice;
//! a Redis restart is survived without restarting confab.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Client;
use common::cluster::{Node, Redis, node_config, node_config_with_retrieval};
use confab_loadtest::mock::{Behavior, MockUpstream};
use serde_json::{Value, json};

const LEASE_MS: u64 = 2_000;

struct Cluster {
    redis: Redis,
    nodes: Vec<Node>,
    mock: MockUpstream,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn cluster(n: usize, reply: Behavior) -> Cluster {
    cluster_on(n, reply, Redis::start().await).await
}

async fn cluster_on(n: usize, reply: Behavior, redis: Redis) -> Cluster {
    let mock = MockUpstream::start(0, reply).await.expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = node_config(dir.path(), &mock.base_url(), &redis.url(), LEASE_MS);
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(Node::start(&format!("node{i}"), &config).await);
    }
    Cluster {
        redis,
        nodes,
        mock,
        config,
        _dir: dir,
    }
}

/// A client on `node` that joined `room`.
async fn member(node: &Node, room: &str, name: &str) -> Client {
    let mut c = Client::connect(&node.ws_url()).await;
    c.join(room, name).await;
    c
}

/// Room events (those with a seq, resyncs aside) by seq, as raw text; every seq once.
type Stream = BTreeMap<u64, String>;

/// Reads raw frames until `ends` turns ended, recording room events by seq; panics on a
/// duplicate or a gap.
async fn collect(c: &mut Client, ends: usize) -> Stream {
    use futures_util::StreamExt;
    let mut out = Stream::new();
    let mut seen_ends = 0;
    while seen_ends < ends {
        let msg = tokio::time::timeout(Duration::from_secs(15), c.ws.next())
            .await
            .expect("timed out waiting for events")
            .expect("stream ended")
            .expect("ws error");
        let tokio_tungstenite::tungstenite::Message::Text(text) = msg else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        let (Some(seq), false) = (v["seq"].as_u64(), v["type"] == "resync") else {
            continue;
        };
        if let Some(prev) = out.keys().next_back() {
            assert_eq!(seq, prev + 1, "gap or duplicate after {prev}: {text}");
        }
        out.insert(seq, text.to_string());
        c.last_seq = seq;
        if v["type"] == "end" {
            seen_ends += 1;
        }
    }
    out
}

fn slow_reply(tokens: usize) -> Behavior {
    Behavior::tokens(tokens, Duration::from_millis(100))
}

/// How many upstream requests asked this prompt (as their last message: earlier turns come
/// along as context).
fn runs(mock: &MockUpstream, prompt: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.last())
                .is_some_and(|m| m["content"].to_string().contains(prompt))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_on_three_nodes_see_identical_event_streams() {
    let c = cluster(3, Behavior::tokens(12, Duration::from_millis(5))).await;
    let mut members = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        members.push(member(node, "general", &format!("m{i}")).await);
    }
    // Everyone is in: the last presence lists three members on every node.
    let start_seq = members.iter().map(|m| m.last_seq).max().unwrap_or(0);
    members[0]
        .send(json!({"type": "prompt", "text": "first from node0"}))
        .await;
    members[2]
        .send(json!({"type": "prompt", "text": "second from node2"}))
        .await;
    let mut streams = Vec::new();
    for m in &mut members {
        let mut s = collect(m, 2).await;
        streams.push(s.split_off(&(start_seq + 1)));
    }
    let reference = &streams[0];
    assert!(reference.len() >= 2 + 2 * (1 + 12 + 2), "{reference:?}");
    for s in &streams[1..] {
        assert_eq!(s, reference, "same seqs, same bytes on every node");
    }
    assert_eq!(runs(&c.mock, "first from node0"), 1);
    assert_eq!(runs(&c.mock, "second from node2"), 1);
    // The history is shared: a newcomer on any node sees both turns.
    let mut late = Client::connect(&c.nodes[1].ws_url()).await;
    late.send(json!({"type": "join", "room": "general", "name": "late"}))
        .await;
    let resync = late.until_type("resync").await.pop().unwrap();
    let turns = resync["snapshot"]["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "{resync}");
    assert_eq!(turns[0]["answer"], "t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10 t11 ");
    let roster = resync["snapshot"]["members"].as_array().unwrap();
    assert_eq!(roster.len(), 3, "members of every node: {resync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_on_another_node_yields_exactly_the_missed_events() {
    let c = cluster(3, slow_reply(20)).await;
    let mut watcher = member(&c.nodes[1], "r", "watcher").await;
    let mut leaver = member(&c.nodes[0], "r", "leaver").await;
    let _ = watcher.until_type("presence").await;
    leaver
        .send(json!({"type": "prompt", "text": "long one"}))
        .await;
    // Read a few deltas, then drop the connection mid-turn.
    let mut seen = 0;
    while seen < 3 {
        if leaver.recv().await["type"] == "delta" {
            seen += 1;
        }
    }
    let (last_seq, epoch) = (leaver.last_seq, leaver.epoch.clone());
    drop(leaver);
    let all = collect(&mut watcher, 1).await;
    // Back on another node with where it was: exactly the events after `last_seq`, the same
    // the watcher saw (its own leave's `presence` among them).
    let last = *all.keys().next_back().unwrap();
    let replayed = resume(&c.nodes[2], "r", last_seq, &epoch, last).await;
    let normalized = |t: &String| serde_json::from_str::<Value>(t).unwrap();
    let expected: Vec<Value> = all
        .range(last_seq + 1..)
        .map(|(_, t)| normalized(t))
        .collect();
    assert_eq!(replayed, expected);
}

/// A member on each of `c`'s three nodes in `room`; node 0's member asks `first`, node 1's
/// `second`. Returns the members, the turn id of `first` once it streams (as member
/// `watch` saw it), and the index of the node running it (the lease holder).
async fn running_turn(
    c: &Cluster,
    room: &str,
    (first, second): (&str, &str),
    watch: usize,
) -> (Vec<Client>, Option<String>, usize) {
    let mut members = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        members.push(member(node, room, &format!("m{i}")).await);
    }
    members[0]
        .send(json!({"type": "prompt", "text": first}))
        .await;
    members[1]
        .send(json!({"type": "prompt", "text": second}))
        .await;
    let mut turn = None;
    while turn.is_none() {
        let ev = members[watch].recv().await;
        if ev["type"] == "delta" {
            turn = ev["turn_id"].as_str().map(str::to_string);
        }
    }
    let holder = c
        .redis
        .lease_holder()
        .await
        .expect("a node holds the lease");
    let runner = c.nodes.iter().position(|n| n.id == holder).unwrap();
    (members, turn, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_turn_is_ended_by_another_and_the_queue_moves_on() {
    let mut c = cluster(3, slow_reply(60)).await;
    // Wait until P1 streams, then kill the node that runs it.
    let (mut members, p1, victim) = running_turn(&c, "k", ("P1 doomed", "P2 next"), 1).await;
    c.nodes[victim].kill();
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    for &i in &survivors {
        let m = &mut members[i];
        let evs = m.until_end().await;
        let elapsed = killed.elapsed();
        let end = evs.last().unwrap();
        let error = evs
            .iter()
            .find(|e| e["type"] == "error")
            .expect("an error event");
        assert_eq!(error["code"], "node_lost", "{error}");
        assert_eq!(error["retryable"], true);
        assert_eq!(end["turn_id"].as_str(), p1.as_deref());
        assert_eq!(
            (end["finish_reason"].clone(), end["partial"].clone()),
            (json!("error"), json!(true))
        );
        assert!(
            elapsed <= Duration::from_millis(LEASE_MS + 250),
            "ended {elapsed:?} after the kill (lease {LEASE_MS} ms)"
        );
    }
    // P2 runs on a survivor, to the end, once; P1 never ran again.
    for &i in &survivors {
        let evs = members[i].until_end().await;
        assert_eq!(evs.last().unwrap()["finish_reason"], "stop", "{evs:?}");
        assert!(evs.iter().any(|e| e["type"] == "start"));
    }
    assert_eq!(runs(&c.mock, "P1 doomed"), 1);
    assert_eq!(runs(&c.mock, "P2 next"), 1);
    let holder = c.redis.lease_holder().await;
    assert_ne!(holder.as_deref(), Some(c.nodes[victim].id.as_str()));
    // The killed node's member left the roster, and P1's partial answer is history.
    let mut late = Client::connect(&c.nodes[survivors[0]].ws_url()).await;
    late.send(json!({"type": "join", "room": "k", "name": "late"}))
        .await;
    let resync = late.until_type("resync").await.pop().unwrap();
    let turns = resync["snapshot"]["turns"].as_array().unwrap();
    assert_eq!(turns[0]["partial"], true, "{resync}");
    let names: Vec<&str> = resync["snapshot"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(!names.contains(&format!("m{victim}").as_str()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_typing_work_from_any_node() {
    let c = cluster(2, slow_reply(100)).await;
    let mut a = member(&c.nodes[0], "c", "a").await;
    let mut b = member(&c.nodes[1], "c", "b").await;
    let _ = a.until_type("presence").await;
    b.send(json!({"type": "typing", "active": true})).await;
    let typing = a.until_type("typing").await.pop().unwrap();
    assert_eq!(typing["member"]["name"], "b");
    a.send(json!({"type": "prompt", "text": "to be cancelled"}))
        .await;
    a.send(json!({"type": "prompt", "text": "queued then cancelled"}))
        .await;
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let ev = b.recv().await;
        if ev["type"] == "message" {
            ids.push(ev["turn_id"].as_str().unwrap().to_string());
        }
    }
    let _ = b.until_type("delta").await;
    b.send(json!({"type": "cancel", "turn_id": ids[1]})).await;
    b.send(json!({"type": "cancel", "turn_id": ids[0]})).await;
    let mut ended = BTreeMap::new();
    while ended.len() < 2 {
        let ev = a.recv().await;
        if ev["type"] == "end" {
            ended.insert(ev["turn_id"].as_str().unwrap().to_string(), ev);
        }
    }
    for id in &ids {
        assert_eq!(ended[id]["finish_reason"], "cancelled", "{:?}", ended[id]);
    }
    assert_eq!(runs(&c.mock, "queued then cancelled"), 0);
    b.send(json!({"type": "cancel", "turn_id": ids[0]})).await;
    let err = b.until_type("error").await.pop().unwrap();
    assert_eq!(err["code"], "unknown_turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_is_survived_without_restarting_confab() {
    let mut c = cluster(2, Behavior::tokens(5, Duration::from_millis(5))).await;
    let mut a = member(&c.nodes[0], "x", "a").await;
    let mut b = member(&c.nodes[1], "x", "b").await;
    let _ = a.until_type("presence").await;
    a.send(json!({"type": "prompt", "text": "before"})).await;
    collect(&mut b, 1).await;
    c.redis.kill();
    for n in &c.nodes {
        n.wait_ready(false).await;
    }
    // While Redis is away: a clear, retryable error; the session stays open.
    a.send(json!({"type": "prompt", "text": "during"})).await;
    let err = a.until_type("error").await.pop().unwrap();
    assert_eq!(err["code"], "cluster_unavailable", "{err}");
    assert_eq!(err["retryable"], true);
    a.send(json!({"type": "ping", "nonce": "n1"})).await;
    assert_eq!(a.until_type("pong").await.pop().unwrap()["nonce"], "n1");
    // Redis comes back empty: the nodes recover by themselves.
    c.redis.restart().await;
    for n in &c.nodes {
        n.wait_ready(true).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = loop {
        a.send(json!({"type": "prompt", "text": "after"})).await;
        let ev = loop {
            let ev = a.recv().await;
            if ev["type"] == "message" || ev["type"] == "error" {
                break ev;
            }
        };
        if ev["type"] == "message" {
            break true;
        }
        assert!(Instant::now() < deadline, "prompts still refused: {ev}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ok);
    // The log was lost with Redis: the other member gets a resync to the new epoch, then
    // the turn's events, or (if its node caught up after the turn ended) a resync whose
    // snapshot holds the finished turn.
    let mut resynced = false;
    loop {
        let ev = b.recv().await;
        if ev["type"] == "resync" {
            resynced = true;
            let turns = ev["snapshot"]["turns"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if turns
                .iter()
                .any(|t| t["prompt"] == "after" && t["finish_reason"] == "stop")
            {
                break;
            }
        }
        if ev["type"] == "end" {
            assert!(resynced, "a resync first: the epoch changed");
            assert_eq!(ev["finish_reason"], "stop");
            break;
        }
    }
    assert_eq!(runs(&c.mock, "after"), 1);
    assert_eq!(runs(&c.mock, "during"), 0);
}

/// Resumes `room` on `node` from `last_seq`/`epoch`: the events replayed up to `until`
/// (panics on a resync).
async fn resume(node: &Node, room: &str, last_seq: u64, epoch: &Value, until: u64) -> Vec<Value> {
    let mut c = Client::connect(&node.ws_url()).await;
    c.send(json!({"type": "join", "room": room, "name": "back",
        "last_seq": last_seq, "epoch": epoch}))
        .await;
    let mut out = Vec::new();
    loop {
        let ev = c.recv().await;
        assert_ne!(ev["type"], "resync", "resumed, not resynced: {ev}");
        let seq = ev["seq"].as_u64().unwrap();
        out.push(ev);
        if seq >= until {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_survive_a_restart_of_every_node() {
    let mut c = cluster(2, Behavior::tokens(6, Duration::from_millis(5))).await;
    let mut a = member(&c.nodes[0], "s", "a").await;
    let mut b = member(&c.nodes[1], "s", "b").await;
    let _ = a.until_type("presence").await;
    let (mark, epoch) = (a.last_seq, a.epoch.clone());
    a.send(json!({"type": "prompt", "text": "remember me"}))
        .await;
    let seen = collect(&mut b, 1).await;
    let last = *seen.keys().next_back().unwrap();
    drop((a, b));
    for n in &mut c.nodes {
        n.kill();
    }
    let fresh = Node::start("node-new", &c.config).await;
    let replay = resume(&fresh, "s", mark, &epoch, last).await;
    let replayed: Vec<u64> = replay.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(replayed, ((mark + 1)..=last).collect::<Vec<_>>());
    assert_eq!(common::answer(&replay), "t0 t1 t2 t3 t4 t5 ");
    let mut late = Client::connect(&fresh.ws_url()).await;
    late.send(json!({"type": "join", "room": "s", "name": "late"}))
        .await;
    let resync = late.until_type("resync").await.pop().unwrap();
    assert_eq!(resync["snapshot"]["turns"][0]["prompt"], "remember me");
    assert_eq!(resync["snapshot"]["epoch"], epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_fsynced_append_only_file_a_redis_crash_loses_no_event() {
    let redis = Redis::start_with(true).await;
    let mut c = cluster_on(1, Behavior::tokens(4, Duration::from_millis(5)), redis).await;
    let mut a = member(&c.nodes[0], "p", "a").await;
    let (mark, epoch) = (a.last_seq, a.epoch.clone());
    a.send(json!({"type": "prompt", "text": "durable"})).await;
    let seen = collect(&mut a, 1).await;
    let last = *seen.keys().next_back().unwrap();
    c.redis.kill();
    c.nodes[0].wait_ready(false).await;
    c.redis.restart().await;
    c.nodes[0].wait_ready(true).await;
    // Same epoch: every acknowledged event is back, for a client of another node too.
    let other = Node::start("node-b", &c.config).await;
    let replay = resume(&other, "p", mark, &epoch, last).await;
    assert_eq!(common::answer(&replay), "t0 t1 t2 t3 ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sse_follower_on_another_node_sees_the_room() {
    let c = cluster(2, Behavior::tokens(5, Duration::from_millis(5))).await;
    let mut a = member(&c.nodes[0], "f", "a").await;
    let mut resp = reqwest::get(c.nodes[1].http("/v1/rooms/f/events"))
        .await
        .unwrap();
    assert!(resp.status().is_success());
    // The follower is in once its resync arrived.
    let mut buf = String::new();
    while !buf.contains("event: resync") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await;
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap().unwrap()));
    }
    a.send(json!({"type": "prompt", "text": "seen from afar"}))
        .await;
    let ws = collect(&mut a, 1).await;
    while !buf.contains("event: end") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await;
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap().unwrap()));
    }
    for text in ws.values().filter(|t| t.contains("\"type\":\"delta\"")) {
        assert!(
            buf.contains(text.as_str()),
            "the follower got the same bytes: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_node_that_wakes_up_cannot_write_into_the_turn_another_node_ended() {
    let c = cluster(3, slow_reply(60)).await;
    let (mut members, z1, frozen) = running_turn(&c, "z", ("Z1 frozen", "Z2 after"), 2).await;
    c.nodes[frozen].freeze();
    let watcher = (0..3).find(|i| *i != frozen).unwrap();
    let evs = members[watcher].until_end().await;
    let end = evs.last().unwrap();
    assert_eq!(end["turn_id"].as_str(), z1.as_deref());
    assert!(evs.iter().any(|e| e["code"] == "node_lost"), "{evs:?}");
    // The next turn starts on a survivor; then the frozen node wakes up mid-Z1.
    let _ = members[watcher].until_type("start").await;
    c.nodes[frozen].thaw();
    // Every member, the woken node's own included, sees Z2 to its end and nothing more of
    // Z1: the log refuses the woken node's writes into a turn that is no longer running.
    for (i, m) in members.iter_mut().enumerate() {
        let mut after_end = i == watcher;
        loop {
            let ev = m.recv().await;
            if ev["turn_id"].as_str() == z1.as_deref() {
                assert!(!after_end, "member {i} got Z1 after its end: {ev}");
                after_end = ev["type"] == "end";
                continue;
            }
            if ev["type"] == "end" {
                assert_eq!(ev["finish_reason"], "stop", "{ev}");
                break;
            }
        }
    }
    assert_eq!(runs(&c.mock, "Z1 frozen"), 1);
    assert_eq!(runs(&c.mock, "Z2 after"), 1);
}

#[tokio::test]
async fn opening_a_room_reads_only_the_tail_its_mirror_keeps() {
    use confab::cluster::{Cluster as Store, Emit};
    let redis = Redis::start().await;
    let mut cfg = confab::config::ClusterConfig {
        backend: confab::config::ClusterBackend::Redis,
        ..Default::default()
    };
    cfg.redis_url = confab::config::Secret::new(redis.url());
    let rooms = confab::config::RoomsConfig {
        replay_bytes: 10_000,
        ..Default::default()
    };
    let store = Store::connect(&cfg, &rooms).expect("store");
    let keys = store.room_keys("acme", "big");
    let event = |i: usize| Emit {
        kind: "presence",
        head: "{\"room\":\"big\",".into(),
        tail: format!(
            "\"ts\":{i},\"type\":\"presence\",\"members\":[],\"pad\":\"{}\"}}",
            "x".repeat(1_000)
        ),
        turn_id: String::new(),
        history: String::new(),
    };
    let batch: Vec<Emit> = (0..1_200).map(event).collect();
    let (epoch, seqs) = store.emit(&keys, &batch).await.expect("emit");
    assert_eq!(seqs.last(), Some(&1_200));
    let loaded = store.load(&keys).await.expect("load");
    assert_eq!(
        (loaded.epoch.as_str(), loaded.head),
        (epoch.as_str(), 1_200)
    );
    let bytes: usize = loaded.frames.iter().map(|f| f.frame.len()).sum();
    let seqs: Vec<u64> = loaded.frames.iter().map(|f| f.seq).collect();
    assert!(
        bytes <= 10_000 && seqs.len() >= 8,
        "{} events, {bytes} bytes",
        seqs.len()
    );
    assert_eq!(seqs.last(), Some(&1_200), "the newest");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
    // A gap fill comes in batches.
    let (_, head, first) = store.range(&keys, 0).await.expect("range").expect("room");
    assert_eq!((head, first.len()), (1_200, Store::RANGE_BATCH));
    assert_eq!(first.first().map(|f| f.seq), Some(1));
    assert!(
        first[0]
            .frame
            .starts_with("{\"room\":\"big\",\"seq\":1,\"ts\":0,")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_drains_finishes_its_turn_and_its_members_leave_at_once() {
    let c = cluster(2, Behavior::tokens(10, Duration::from_millis(50))).await;
    let mut a = member(&c.nodes[0], "d", "a").await;
    let mut b = member(&c.nodes[1], "d", "b").await;
    let _ = a.until_type("presence").await;
    a.send(json!({"type": "prompt", "text": "finish me"})).await;
    let _ = b.until_type("delta").await;
    let holder = c
        .redis
        .lease_holder()
        .await
        .expect("a node holds the lease");
    let draining = c.nodes.iter().position(|n| n.id == holder).unwrap();
    c.nodes[draining].terminate();
    let watcher = if draining == 0 { &mut b } else { &mut a };
    let evs = watcher.until_end().await;
    assert_eq!(evs.last().unwrap()["finish_reason"], "stop", "{evs:?}");
    assert!(evs.iter().all(|e| e["type"] != "error"), "{evs:?}");
    // Its member's leave is written before it exits: well before the presence lease.
    let gone = ["a", "b"][draining].to_string();
    let t0 = Instant::now();
    loop {
        let ev = watcher.until_type("presence").await.pop().unwrap();
        let names: Vec<&str> = ev["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        if !names.contains(&gone.as_str()) {
            break;
        }
    }
    assert!(
        t0.elapsed() < Duration::from_millis(LEASE_MS),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(runs(&c.mock, "finish me"), 1);
}

/// Asks `prompt` in a fresh room on `node`; the turn's `start` event.
async fn ask(node: &Node, room: &str, prompt: &str) -> Value {
    let mut c = member(node, room, "asker").await;
    c.send(json!({"type": "prompt", "text": prompt})).await;
    let evs = c.until_end().await;
    assert_eq!(evs.last().unwrap()["finish_reason"], "stop", "{evs:?}");
    evs.into_iter()
        .find(|e| e["type"] == "start")
        .expect("a start")
}

/// Asks `q` on `node` in fresh rooms until an answer is not from the cache, within a second
/// of the first try.
async fn misses_within_a_second(node: &Node, q: &str, what: &str) {
    let t0 = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        if ask(node, &format!("{what}{n}"), q).await["cached"].is_null() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "after the {what}, node {} still answers from its cache",
            node.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_or_a_delete_on_one_node_makes_the_other_nodes_caches_miss_within_a_second() {
    let mock = MockUpstream::start(0, Behavior::text(&["The WAL ", "replays."]))
        .await
        .expect("mock");
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = node_config_with_retrieval(dir.path(), &mock.base_url(), &redis.url());
    let a = Node::start("node-a", &config).await;
    let c = Node::start("node-c", &config).await;
    let q = "How does Larkspur recover after a crash?";
    assert!(
        ask(&c, "r1", q).await["cached"].is_null(),
        "first time: upstream"
    );
    assert!(
        !ask(&c, "r2", q).await["cached"].is_null(),
        "then the cache"
    );
    let http = reqwest::Client::new();
    let upload = http
        .post(a.http("/v1/documents?wait=true"))
        .json(&json!({"title": "Larkspur", "text": "After a crash, Larkspur replays its WAL."}))
        .send()
        .await
        .unwrap();
    assert!(upload.status().is_success(), "{}", upload.status());
    let doc: Value = upload.json().await.unwrap();
    assert_eq!(doc["status"], "indexed", "{doc}");
    misses_within_a_second(&c, q, "upload").await;
    assert!(
        !ask(&c, "again", q).await["cached"].is_null(),
        "cached again, at the new version"
    );
    // A delete on A: C no longer answers from what it cached while the document existed.
    let id = doc["id"].as_str().unwrap();
    let deleted = http
        .delete(a.http(&format!("/v1/documents/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    misses_within_a_second(&c, q, "delete").await;
    drop((a, c, redis));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_is_full_when_all_nodes_together_hold_max_members() {
    let mock = MockUpstream::start(0, Behavior::text(&["ok"]))
        .await
        .expect("mock");
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = node_config(dir.path(), &mock.base_url(), &redis.url(), LEASE_MS);
    let env = [("CONFAB__ROOMS__MAX_MEMBERS", "2")];
    let n0 = Node::start_with("n0", &config, &env).await;
    let n1 = Node::start_with("n1", &config, &env).await;
    let mut a = member(&n0, "full", "a").await;
    let _b = member(&n1, "full", "b").await;
    let _ = a.until_type("presence").await;
    let mut c = Client::connect(&n0.ws_url()).await;
    c.send(json!({"type": "join", "room": "full", "name": "c"}))
        .await;
    let err = c.until_type("error").await.pop().unwrap();
    assert_eq!(err["code"], "room_full", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_hangs_fails_prompts_fast_and_the_nodes_recover_when_it_answers() {
    let c = cluster(2, Behavior::tokens(3, Duration::from_millis(5))).await;
    let mut a = member(&c.nodes[0], "h", "a").await;
    let mut b = member(&c.nodes[1], "h", "b").await;
    let _ = a.until_type("presence").await;
    c.redis.freeze(true);
    for n in &c.nodes {
        n.wait_ready(false).await;
    }
    // No answer from Redis: a clear error within the call timeout, not a hang.
    let t0 = Instant::now();
    a.send(json!({"type": "prompt", "text": "while frozen"}))
        .await;
    let err = a.until_type("error").await.pop().unwrap();
    assert_eq!(err["code"], "cluster_unavailable", "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    c.redis.freeze(false);
    for n in &c.nodes {
        n.wait_ready(true).await;
    }
    a.send(json!({"type": "prompt", "text": "thawed"})).await;
    let evs = b.until_end().await;
    assert_eq!(evs.last().unwrap()["finish_reason"], "stop", "{evs:?}");
    assert_eq!(runs(&c.mock, "thawed"), 1);
    assert_eq!(runs(&c.mock, "while frozen"), 0);
}
