//! Observability end to end: drive real turns (a normal one, a fallback, a rejected prompt,
//! an upload and a search), scrape /metrics, check the series exist and moved, and check that
//! every metric the dashboards and rules use is exported (or is a recording rule).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{TestServer, chain, provider, with_retrieval};
use confab_loadtest::mock::Behavior;
use serde_json::json;

/// Sample values by series line (name + labels) from the text exposition format.
fn parse(scrape: &str) -> HashMap<String, f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn names(scrape: &str) -> BTreeSet<String> {
    parse(scrape)
        .keys()
        .map(|s| s.split('{').next().unwrap().to_string())
        .collect()
}

/// Sum of every series of `name` whose labels contain all of `labels`.
fn total(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.split('{').next() == Some(name) && labels.iter().all(|l| s.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(srv: &TestServer) -> String {
    let resp = reqwest::get(srv.http("/metrics")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.unwrap()
}

/// Metric names (`confab_*`) and recording-rule names (`confab:*`) used in a text.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if text[text.char_indices().nth(i).map(|(b, _)| b).unwrap_or(0)..].starts_with("confab") {
            let mut j = i;
            while j < bytes.len()
                && (bytes[j].is_ascii_alphanumeric() || bytes[j] == '_' || bytes[j] == ':')
            {
                j += 1;
            }
            let word: String = bytes[i..j].iter().collect();
            if word.starts_with("confab_") || word.starts_with("confab:") {
                out.insert(word);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test]
async fn metrics_move_and_dashboards_only_use_exported_series() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let srv = TestServer::start_with(Behavior::tokens(5, std::time::Duration::ZERO), move |c| {
        with_retrieval(c, &p);
        c.ws.max_prompt_chars = 100;
        let mut m = c.providers.remove("mock").unwrap();
        m.price_input_per_mtok = 1.0;
        m.price_output_per_mtok = 2.0;
        c.providers.insert("mock".into(), m);
        c.providers
            .insert("down".into(), provider(&dead_url, "down-model"));
        chain(c, &["down", "mock"]);
    })
    .await;
    let before = parse(&scrape(&srv).await);

    let client = reqwest::Client::new();
    let r = client
        .post(srv.http("/v1/documents?wait=true"))
        .json(&json!({"title": "t", "text": "Metrics are exported in the Prometheus text format."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .post(srv.http("/v1/search"))
        .json(&json!({"query": "prometheus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let mut a = srv.joined("m", "alice").await;
    for _ in 0..2 {
        a.send(json!({"type": "prompt", "text": "how are metrics exported?"}))
            .await;
        let ev = a.until_end().await;
        assert_eq!(ev.last().unwrap()["finish_reason"], "stop");
    }
    // The same first question in a fresh room: an exact cache hit.
    let mut b = srv.joined("m2", "bob").await;
    b.send(json!({"type": "prompt", "text": "how are metrics exported?"}))
        .await;
    let ev = b.until_end().await;
    let start = ev.iter().find(|e| e["type"] == "start").unwrap();
    assert_eq!(start["cached"]["layer"], "exact");
    a.send(json!({"type": "prompt", "text": "x".repeat(200)}))
        .await;
    assert_eq!(
        a.until_type("error").await.last().unwrap()["code"],
        "prompt_too_long"
    );
    a.send(json!({"type": "ping"})).await;
    a.until_type("pong").await;

    let text = scrape(&srv).await;
    let after = parse(&text);
    let moved =
        |name: &str, labels: &[&str]| total(&after, name, labels) - total(&before, name, labels);

    assert!(moved("confab_ws_connections_total", &[]) >= 1.0);
    assert!(total(&after, "confab_ws_sessions", &[]) >= 1.0);
    assert!(total(&after, "confab_rooms", &[]) >= 1.0);
    assert!(moved("confab_ws_events_sent_total", &["type=\"delta\""]) >= 10.0);
    assert!(
        moved("confab_ws_errors_total", &["code=\"prompt_too_long\""]) >= 1.0,
        "rejected request counted"
    );
    assert!(moved("confab_turns_total", &["outcome=\"stop\""]) >= 2.0);
    assert!(moved("confab_turn_duration_seconds_count", &[]) >= 2.0);
    assert!(moved("confab_ttft_seconds_count", &[]) >= 2.0);
    assert!(moved("confab_inter_token_seconds_count", &[]) >= 8.0);
    assert!(
        moved(
            "confab_tokens_total",
            &["model=\"mock-model\"", "direction=\"out\""]
        ) >= 10.0
    );
    assert!(
        moved("confab_cost_usd_total", &["model=\"mock-model\""]) > 0.0,
        "cost counted"
    );
    assert!(
        moved(
            "confab_provider_attempts_total",
            &["provider=\"down\"", "outcome=\"error\""]
        ) >= 2.0
    );
    assert!(
        moved(
            "confab_provider_attempts_total",
            &["provider=\"mock\"", "outcome=\"ok\""]
        ) >= 2.0
    );
    assert!(
        moved("confab_provider_fallbacks_total", &["chain=\"default\""]) >= 2.0,
        "fallback counted"
    );
    assert!(
        after
            .keys()
            .any(|s| s.starts_with("confab_provider_circuit_state{provider=\"down\""))
    );
    assert!(moved("confab_embed_batch_size_count", &[]) >= 1.0);
    assert!(moved("confab_embed_duration_seconds_count", &[]) >= 3.0);
    assert!(
        moved(
            "confab_vector_search_duration_seconds_count",
            &["backend=\"edge\""]
        ) >= 3.0
    );
    assert!(moved("confab_ingest_documents_total", &["outcome=\"indexed\""]) >= 1.0);
    assert!(moved("confab_ingest_chunks_total", &[]) >= 1.0);
    let hit = ["layer=\"exact\"", "result=\"hit\""];
    assert!(
        moved("confab_cache_lookups_total", &hit) >= 1.0,
        "cache hit counted"
    );
    // Retrieval cache, each lookup counted once: /v1/search, the first turn, and the second
    // turn (a short prompt, so it is embedded with the previous one: another query) all miss.
    let retrieval = |r: &str| moved("confab_cache_lookups_total", &["layer=\"retrieval\"", r]);
    assert_eq!(retrieval("result=\"miss\""), 3.0);
    assert_eq!(retrieval("result=\"hit\""), 0.0);
    assert!(
        moved("confab_cache_saved_usd_total", &[]) > 0.0,
        "saved cost counted"
    );
    assert!(total(&after, "confab_cache_entries", &[]) >= 1.0);
    assert!(
        moved(
            "confab_http_requests_total",
            &["route=\"/v1/search\"", "status=\"2xx\""]
        ) >= 1.0
    );
    assert!(
        after
            .keys()
            .any(|s| s.starts_with("confab_embed_queue_depth{priority=\"query\""))
    );

    // No unbounded labels: no room names, session or document ids in any series.
    for series in after.keys() {
        assert!(
            !series.contains("alice") && !series.contains("room="),
            "{series}"
        );
    }
    // Conventions: every confab metric is prefixed; counters end in _total.
    for line in text.lines().filter(|l| l.starts_with("# TYPE confab")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
    }

    // Every name in dashboards and rules is exported, or is a recording rule defined in
    // prometheus/rules.yml.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("prometheus/rules.yml")).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(|s| s.trim().to_string())
        .collect();
    assert!(recorded.len() >= 10);
    let exported = names(&text);
    let mut sources = vec![("prometheus/rules.yml".to_string(), rules)];
    for entry in std::fs::read_dir(root.join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            sources.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    assert!(sources.len() >= 4, "three dashboards and the rules");
    for (file, body) in sources {
        let used = referenced(&body);
        assert!(!used.is_empty(), "{file} references no metric");
        for name in used {
            let ok = if name.contains(':') {
                recorded.contains(&name)
            } else {
                exported.contains(&name)
            };
            assert!(ok, "{file} uses {name}, which the server does not export");
        }
    }
}
