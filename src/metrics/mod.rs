//! Every metric confab exports, in one place: name, unit, help text, buckets and the bounded
//! label values. Code elsewhere records through the functions below, never by name, so the
//! catalogue cannot drift from what is exported. No label ever holds a room, user, session or
//! document id; provider, model and chain names come from config and are bounded by it.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

mod cost;

/// The whole exposition: the recorder's metrics plus the float cost counter.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    cost::render(&mut out);
    out
}

// --- names -----------------------------------------------------------------------------
pub const WS_CONNECTIONS_TOTAL: &str = "confab_ws_connections_total";
pub const WS_SESSIONS: &str = "confab_ws_sessions";
pub const WS_EVENTS_SENT_TOTAL: &str = "confab_ws_events_sent_total";
pub const WS_ERRORS_TOTAL: &str = "confab_ws_errors_total";
pub const WS_CLOSES_TOTAL: &str = "confab_ws_closes_total";
pub const WS_OUTBOUND_DROPPED_TOTAL: &str = "confab_ws_outbound_dropped_total";
pub const WS_SLOW_CONSUMER_DISCONNECTS_TOTAL: &str = "confab_ws_slow_consumer_disconnects_total";
pub const WS_RESUMES_TOTAL: &str = "confab_ws_resumes_total";
pub const ROOMS: &str = "confab_rooms";
pub const TURNS_TOTAL: &str = "confab_turns_total";
pub const TURN_DURATION_SECONDS: &str = "confab_turn_duration_seconds";
pub const TTFT_SECONDS: &str = "confab_ttft_seconds";
pub const INTER_TOKEN_SECONDS: &str = "confab_inter_token_seconds";
pub const TOKENS_TOTAL: &str = "confab_tokens_total";
pub const COST_USD_TOTAL: &str = "confab_cost_usd_total";
pub const PROVIDER_ATTEMPTS_TOTAL: &str = "confab_provider_attempts_total";
pub const PROVIDER_RETRIES_TOTAL: &str = "confab_provider_retries_total";
pub const PROVIDER_FALLBACKS_TOTAL: &str = "confab_provider_fallbacks_total";
pub const PROVIDER_CIRCUIT_STATE: &str = "confab_provider_circuit_state";
pub const EMBED_QUEUE_DEPTH: &str = "confab_embed_queue_depth";
pub const EMBED_BATCH_SIZE: &str = "confab_embed_batch_size";
pub const EMBED_DURATION_SECONDS: &str = "confab_embed_duration_seconds";
pub const VECTOR_SEARCH_DURATION_SECONDS: &str = "confab_vector_search_duration_seconds";
pub const INGEST_DOCUMENTS_TOTAL: &str = "confab_ingest_documents_total";
pub const INGEST_CHUNKS_TOTAL: &str = "confab_ingest_chunks_total";
pub const INGEST_QUEUE_JOBS: &str = "confab_ingest_queue_jobs";
pub const INGEST_JOB_DURATION_SECONDS: &str = "confab_ingest_job_duration_seconds";
pub const INGEST_JOBS_RECLAIMED_TOTAL: &str = "confab_ingest_jobs_reclaimed_total";
pub const CACHE_LOOKUPS_TOTAL: &str = "confab_cache_lookups_total";
pub const CACHE_SAVED_USD_TOTAL: &str = "confab_cache_saved_usd_total";
pub const CACHE_ENTRIES: &str = "confab_cache_entries";
pub const CACHE_EVICTIONS_TOTAL: &str = "confab_cache_evictions_total";
pub const HTTP_REQUESTS_TOTAL: &str = "confab_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "confab_http_request_duration_seconds";
pub const AUTH_FAILURES_TOTAL: &str = "confab_auth_failures_total";
pub const RATE_LIMITED_TOTAL: &str = "confab_rate_limited_total";
pub const TENANT_TOKENS_TOTAL: &str = "confab_tenant_tokens_total";
pub const TENANT_COST_USD_TOTAL: &str = "confab_tenant_cost_usd_total";
pub const SAFETY_SCREENED_TOTAL: &str = "confab_safety_screened_total";
pub const SAFETY_REDACTIONS_TOTAL: &str = "confab_safety_redactions_total";
pub const CLUSTER_UP: &str = "confab_cluster_up";
pub const CLUSTER_LAGGED_TOTAL: &str = "confab_cluster_lagged_total";
pub const CLUSTER_GAP_FILLS_TOTAL: &str = "confab_cluster_gap_fills_total";
pub const CLUSTER_ERRORS_TOTAL: &str = "confab_cluster_errors_total";
pub const CLUSTER_NODE_LOST_TOTAL: &str = "confab_cluster_node_lost_turns_total";
pub const TOOL_CALLS_TOTAL: &str = "confab_tool_calls_total";
pub const TOOL_CALL_DURATION_SECONDS: &str = "confab_tool_call_duration_seconds";
pub const TOOL_REFUSALS_TOTAL: &str = "confab_tool_refusals_total";
pub const MCP_SERVER_UP: &str = "confab_mcp_server_up";
pub const CACHE_REJECTIONS_TOTAL: &str = "confab_cache_rejections_total";
pub const TRACE_SPANS_EXPORTED_TOTAL: &str = "confab_trace_spans_exported_total";
pub const TRACE_SPANS_DROPPED_TOTAL: &str = "confab_trace_spans_dropped_total";

// --- buckets ---------------------------------------------------------------------------
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Every histogram and its buckets.
const BUCKETED: &[(&str, &[f64])] = &[
    (TURN_DURATION_SECONDS, LATENCY_BUCKETS),
    (TTFT_SECONDS, LATENCY_BUCKETS),
    (INTER_TOKEN_SECONDS, FAST_BUCKETS),
    (EMBED_DURATION_SECONDS, FAST_BUCKETS),
    (VECTOR_SEARCH_DURATION_SECONDS, FAST_BUCKETS),
    (HTTP_REQUEST_DURATION_SECONDS, LATENCY_BUCKETS),
    (EMBED_BATCH_SIZE, BATCH_BUCKETS),
    (INGEST_JOB_DURATION_SECONDS, LATENCY_BUCKETS),
    (TOOL_CALL_DURATION_SECONDS, LATENCY_BUCKETS),
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process and describes every metric; later calls
/// (several servers in one test process) share it. `None` if another recorder was installed.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let mut b = PrometheusBuilder::new();
            for &(name, buckets) in BUCKETED {
                b = b
                    .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                    .ok()?;
            }
            let handle = b.install_recorder().ok()?;
            describe();
            // Histogram samples wait in the recorder until they are folded into buckets; with
            // `install_recorder` that only happens on a scrape or an upkeep. Without this a
            // server nobody scrapes grows by every sample (found by the 10-minute soak).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            Some(handle)
        })
        .clone()
}

/// What a metric is; histograms carry their unit.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram(Unit),
}

/// Every metric with its kind and help text: the one catalogue `describe` and the naming
/// test read.
const CATALOGUE: &[(&str, Kind, &str)] = &[
    (
        WS_CONNECTIONS_TOTAL,
        Kind::Counter,
        "WebSocket connections accepted.",
    ),
    (WS_SESSIONS, Kind::Gauge, "WebSocket sessions open now."),
    (
        WS_EVENTS_SENT_TOTAL,
        Kind::Counter,
        "Server events written to WebSockets, by event type.",
    ),
    (
        WS_ERRORS_TOTAL,
        Kind::Counter,
        "`error` events sent to a session, by error code.",
    ),
    (
        WS_CLOSES_TOTAL,
        Kind::Counter,
        "WebSocket sessions closed by the server, by reason.",
    ),
    (
        WS_OUTBOUND_DROPPED_TOTAL,
        Kind::Counter,
        "Frames not queued for a session because its outbound queue was full.",
    ),
    (
        WS_SLOW_CONSUMER_DISCONNECTS_TOTAL,
        Kind::Counter,
        "Sessions dropped from a room for not keeping up.",
    ),
    (
        WS_RESUMES_TOTAL,
        Kind::Counter,
        "Joins with last_seq, by result (replay or resync).",
    ),
    (ROOMS, Kind::Gauge, "Rooms held in memory."),
    (
        TURNS_TOTAL,
        Kind::Counter,
        "Finished turns, by finish reason.",
    ),
    (
        TURN_DURATION_SECONDS,
        Kind::Histogram(Unit::Seconds),
        "Turn duration from start to end.",
    ),
    (
        TTFT_SECONDS,
        Kind::Histogram(Unit::Seconds),
        "Time from a turn's start to its first delta.",
    ),
    (
        INTER_TOKEN_SECONDS,
        Kind::Histogram(Unit::Seconds),
        "Gap between consecutive deltas of a turn.",
    ),
    (
        TOKENS_TOTAL,
        Kind::Counter,
        "Tokens by model and direction (in = prompt, out = completion).",
    ),
    (
        PROVIDER_ATTEMPTS_TOTAL,
        Kind::Counter,
        "Upstream attempts by provider and outcome.",
    ),
    (
        PROVIDER_RETRIES_TOTAL,
        Kind::Counter,
        "Retries of the same provider before the first token.",
    ),
    (
        PROVIDER_FALLBACKS_TOTAL,
        Kind::Counter,
        "Moves to the next link of a chain, by chain.",
    ),
    (
        PROVIDER_CIRCUIT_STATE,
        Kind::Gauge,
        "Circuit breaker state by provider: 0 closed, 1 open, 2 half-open.",
    ),
    (
        EMBED_QUEUE_DEPTH,
        Kind::Gauge,
        "Texts waiting for the embedding workers, by priority.",
    ),
    (
        EMBED_BATCH_SIZE,
        Kind::Histogram(Unit::Count),
        "Texts per embedding model call.",
    ),
    (
        EMBED_DURATION_SECONDS,
        Kind::Histogram(Unit::Seconds),
        "Embedding model call duration.",
    ),
    (
        VECTOR_SEARCH_DURATION_SECONDS,
        Kind::Histogram(Unit::Seconds),
        "Vector search duration, by backend.",
    ),
    (
        INGEST_DOCUMENTS_TOTAL,
        Kind::Counter,
        "Uploads by outcome: indexed, failed, or unchanged (the same bytes were already indexed).",
    ),
    (
        INGEST_QUEUE_JOBS,
        Kind::Gauge,
        "Ingestion jobs waiting, seen at the last upload (cluster mode: queued or running, cluster-wide).",
    ),
    (
        INGEST_JOB_DURATION_SECONDS,
        Kind::Histogram(Unit::Seconds),
        "Ingestion job duration, parse to publish.",
    ),
    (INGEST_CHUNKS_TOTAL, Kind::Counter, "Chunks indexed."),
    (
        INGEST_JOBS_RECLAIMED_TOTAL,
        Kind::Counter,
        "Cluster mode: ingestion jobs this node took over from a node that stopped renewing them.",
    ),
    (
        CACHE_LOOKUPS_TOTAL,
        Kind::Counter,
        "Cache lookups by layer (exact, semantic, retrieval) and result.",
    ),
    (
        CACHE_ENTRIES,
        Kind::Gauge,
        "Answer-cache entries (answer lists per tenant, corpus version, conversation and chain).",
    ),
    (
        CACHE_EVICTIONS_TOTAL,
        Kind::Counter,
        "Answer-cache scopes evicted for space.",
    ),
    (
        HTTP_REQUESTS_TOTAL,
        Kind::Counter,
        "HTTP requests by route and status.",
    ),
    (
        AUTH_FAILURES_TOTAL,
        Kind::Counter,
        "Requests and upgrades refused before a route: missing or invalid key, disallowed origin.",
    ),
    (
        RATE_LIMITED_TOTAL,
        Kind::Counter,
        "Refusals by a tenant or user limit, by tenant, limit and scope (tenant or user).",
    ),
    (
        TENANT_TOKENS_TOTAL,
        Kind::Counter,
        "Upstream tokens settled against a tenant's budgets.",
    ),
    (
        SAFETY_SCREENED_TOTAL,
        Kind::Counter,
        "Prompts and retrieved chunks tripping the injection screen, by source, rule and action.",
    ),
    (
        SAFETY_REDACTIONS_TOTAL,
        Kind::Counter,
        "Secrets and e-mail addresses replaced in answers, by kind.",
    ),
    (
        HTTP_REQUEST_DURATION_SECONDS,
        Kind::Histogram(Unit::Seconds),
        "HTTP request duration by route.",
    ),
    (
        CLUSTER_UP,
        Kind::Gauge,
        "1 when the cluster store (Redis) answered the last health check (cluster mode).",
    ),
    (
        CLUSTER_LAGGED_TOTAL,
        Kind::Counter,
        "Cluster messages dropped because a room's inbox was full (the room catches up).",
    ),
    (
        CLUSTER_GAP_FILLS_TOTAL,
        Kind::Counter,
        "Times a room read missed events back from its stream, by cause.",
    ),
    (
        CLUSTER_ERRORS_TOTAL,
        Kind::Counter,
        "Cluster store calls that failed, by operation.",
    ),
    (
        CLUSTER_NODE_LOST_TOTAL,
        Kind::Counter,
        "Turns ended by this node because the node running them stopped.",
    ),
    (
        TOOL_CALLS_TOTAL,
        Kind::Counter,
        "Server-side tool calls the model made that ran, by tool (configured MCP tools; \
         `other`) and status: ok, error, timeout.",
    ),
    (
        TOOL_CALL_DURATION_SECONDS,
        Kind::Histogram(Unit::Seconds),
        "Server-side tool call duration (slot wait included), by tool.",
    ),
    (
        TOOL_REFUSALS_TOTAL,
        Kind::Counter,
        "Tool calls not run, by reason: not_offered (outside the tenant's allow-list or \
         unknown), max_tool_calls, max_cost_usd.",
    ),
    (
        MCP_SERVER_UP,
        Kind::Gauge,
        "Whether the last listing of a configured MCP server's tools worked (1) or not (0), by server.",
    ),
    (
        CACHE_REJECTIONS_TOTAL,
        Kind::Counter,
        "Semantic-cache near matches (above the similarity floor) not served, by reason: \
         numbers, negation, antonym, entity, question_word, order, wording.",
    ),
    (
        TRACE_SPANS_EXPORTED_TOTAL,
        Kind::Counter,
        "Trace spans the OTLP collector accepted.",
    ),
    (
        TRACE_SPANS_DROPPED_TOTAL,
        Kind::Counter,
        "Trace spans lost because their export failed or timed out (the collector away or \
         refusing); turns are never held up for them.",
    ),
];

fn describe() {
    for &(name, kind, help) in CATALOGUE {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram(unit) => describe_histogram!(name, unit, help),
        }
    }
}

/// The label values known at boot. The layers that own them pass them in (this module
/// imports nothing above the bottom layer).
#[derive(Debug, Default)]
pub struct BootLabels<'a> {
    /// Every chain link, the extractive one included.
    pub providers: &'a [&'a str],
    /// Links whose circuit breaker can trip (the extractive link's never does).
    pub breakers: &'a [&'a str],
    pub chains: &'a [&'a str],
    /// Tenants from config (bounded by it).
    pub tenants: &'a [String],
    /// The limits a tenant or user can hit.
    pub limits: &'a [&'static str],
}

/// Creates every series whose labels are known at boot, at zero, so `rate()` and the
/// dashboards work before the first event (a series that does not exist reads as "no data").
pub fn init_series(labels: &BootLabels<'_>) {
    init_fixed_series();
    init_model_series(labels);
    init_tenant_series(labels);
}

/// Series whose label values are fixed by the code.
fn init_fixed_series() {
    for c in [
        WS_CONNECTIONS_TOTAL,
        WS_SLOW_CONSUMER_DISCONNECTS_TOTAL,
        INGEST_CHUNKS_TOTAL,
    ] {
        counter!(c).absolute(0);
    }
    counter!(WS_OUTBOUND_DROPPED_TOTAL, "reason" => "queue_full").absolute(0);
    for reason in [
        "frame_too_large",
        "restart",
        "idle_timeout",
        "slow_consumer",
        "key_revoked",
    ] {
        counter!(WS_CLOSES_TOTAL, "reason" => reason).absolute(0);
    }
    for result in ["replay", "resync"] {
        counter!(WS_RESUMES_TOTAL, "result" => result).absolute(0);
    }
    for outcome in ["stop", "length", "cancelled", "error"] {
        counter!(TURNS_TOTAL, "outcome" => outcome).absolute(0);
    }
    for outcome in ["indexed", "failed"] {
        counter!(INGEST_DOCUMENTS_TOTAL, "outcome" => outcome).absolute(0);
    }
    counter!(INGEST_JOBS_RECLAIMED_TOTAL).absolute(0);
    for reason in CACHE_REJECTION_REASONS {
        counter!(CACHE_REJECTIONS_TOTAL, "reason" => *reason).absolute(0);
    }
    counter!(TRACE_SPANS_EXPORTED_TOTAL).absolute(0);
    counter!(TRACE_SPANS_DROPPED_TOTAL).absolute(0);
    for reason in ["not_offered", "max_tool_calls", "max_cost_usd"] {
        counter!(TOOL_REFUSALS_TOTAL, "reason" => reason).absolute(0);
    }
    for layer in ["exact", "semantic", "retrieval"] {
        for result in ["hit", "miss"] {
            counter!(CACHE_LOOKUPS_TOTAL, "layer" => layer, "result" => result).absolute(0);
        }
    }
    counter!(CACHE_EVICTIONS_TOTAL).absolute(0);
    gauge!(CACHE_ENTRIES).increment(0.0);
    cost::add(CACHE_SAVED_USD_TOTAL, SAVED_HELP, vec![], 0.0);
    gauge!(WS_SESSIONS).increment(0.0);
    gauge!(ROOMS).increment(0.0);
    embed_queue(0, 0);
    for reason in ["missing", "invalid", "origin"] {
        counter!(AUTH_FAILURES_TOTAL, "reason" => reason).absolute(0);
    }
    for kind in ["secret", "email"] {
        counter!(SAFETY_REDACTIONS_TOTAL, "kind" => kind).absolute(0);
    }
}

/// Series labelled by configured providers and chains.
fn init_model_series(labels: &BootLabels<'_>) {
    for p in labels.providers {
        counter!(PROVIDER_RETRIES_TOTAL, "provider" => p.to_string()).absolute(0);
    }
    for p in labels.breakers {
        gauge!(PROVIDER_CIRCUIT_STATE, "provider" => p.to_string()).increment(0.0);
    }
    for c in labels.chains {
        counter!(PROVIDER_FALLBACKS_TOTAL, "chain" => c.to_string()).absolute(0);
    }
}

/// Series labelled by configured tenants.
fn init_tenant_series(labels: &BootLabels<'_>) {
    for t in labels.tenants {
        for &limit in labels.limits {
            for scope in ["tenant", "user"] {
                counter!(RATE_LIMITED_TOTAL, "tenant" => t.clone(), "limit" => limit, "scope" => scope)
                    .absolute(0);
            }
        }
        counter!(TENANT_TOKENS_TOTAL, "tenant" => t.clone()).absolute(0);
        cost::add(
            TENANT_COST_USD_TOTAL,
            TENANT_COST_HELP,
            vec![("tenant", t.clone())],
            0.0,
        );
    }
}

// --- bounded label values ----------------------------------------------------------------

/// Status classes keep the label set small.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

// --- recording -------------------------------------------------------------------------

pub fn ws_connected() {
    counter!(WS_CONNECTIONS_TOTAL).increment(1);
    gauge!(WS_SESSIONS).increment(1.0);
}

pub fn ws_disconnected() {
    gauge!(WS_SESSIONS).decrement(1.0);
}

/// Counts one event written to a session. This runs once per frame per member, so each
/// thread keeps the handles it looked up: `counter!` with a label builds a key and searches
/// the registry on every call. Event types are a fixed set of literals, so the cache stays
/// small; before the recorder is installed nothing is cached (it would keep a no-op handle).
pub fn ws_event_sent(kind: &'static str) {
    thread_local! {
        static SENT: std::cell::RefCell<Vec<(&'static str, ::metrics::Counter)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    if HANDLE.get().is_none() {
        counter!(WS_EVENTS_SENT_TOTAL, "type" => kind).increment(1);
        return;
    }
    SENT.with_borrow_mut(|cached| {
        if let Some((_, c)) = cached.iter().find(|(k, _)| *k == kind) {
            c.increment(1);
            return;
        }
        let c = counter!(WS_EVENTS_SENT_TOTAL, "type" => kind);
        c.increment(1);
        cached.push((kind, c));
    });
}

pub fn ws_error(code: &'static str) {
    counter!(WS_ERRORS_TOTAL, "code" => code).increment(1);
}

pub fn ws_closed(reason: &'static str) {
    counter!(WS_CLOSES_TOTAL, "reason" => reason).increment(1);
}

pub fn ws_slow_consumer() {
    counter!(WS_OUTBOUND_DROPPED_TOTAL, "reason" => "queue_full").increment(1);
    counter!(WS_SLOW_CONSUMER_DISCONNECTS_TOTAL).increment(1);
}

pub fn ws_resume(replayed: bool) {
    counter!(WS_RESUMES_TOTAL, "result" => if replayed { "replay" } else { "resync" }).increment(1);
}

pub fn cluster_up(up: bool) {
    gauge!(CLUSTER_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn cluster_lagged() {
    counter!(CLUSTER_LAGGED_TOTAL).increment(1);
}

/// `cause`: `gap` (a seq skipped), `lagged` (messages dropped or the connection dropped).
pub fn cluster_gap_fill(cause: &'static str) {
    counter!(CLUSTER_GAP_FILLS_TOTAL, "cause" => cause).increment(1);
}

/// `op`: one of a fixed set of operation names.
pub fn cluster_error(op: &'static str) {
    counter!(CLUSTER_ERRORS_TOTAL, "op" => op).increment(1);
}

pub fn cluster_node_lost() {
    counter!(CLUSTER_NODE_LOST_TOTAL).increment(1);
}

pub fn rooms(n: usize) {
    gauge!(ROOMS).set(n as f64);
}

/// One finished turn.
pub struct TurnRecord<'a> {
    pub finish_reason: &'static str,
    pub model: &'a str,
    pub duration: Duration,
    pub ttft: Option<Duration>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
}

pub fn turn_finished(t: &TurnRecord<'_>) {
    counter!(TURNS_TOTAL, "outcome" => t.finish_reason).increment(1);
    histogram!(TURN_DURATION_SECONDS).record(t.duration.as_secs_f64());
    if let Some(ttft) = t.ttft {
        histogram!(TTFT_SECONDS).record(ttft.as_secs_f64());
    }
    let model = t.model.to_string();
    counter!(TOKENS_TOTAL, "model" => model.clone(), "direction" => "in").increment(t.tokens_in);
    counter!(TOKENS_TOTAL, "model" => model, "direction" => "out").increment(t.tokens_out);
    cost::add(
        COST_USD_TOTAL,
        "Cost in USD at configured prices, by model and outcome.",
        vec![
            ("model", t.model.to_string()),
            ("outcome", t.finish_reason.to_string()),
        ],
        t.cost_usd,
    );
}

pub fn inter_token(gap: Duration) {
    histogram!(INTER_TOKEN_SECONDS).record(gap.as_secs_f64());
}

pub fn provider_attempt(provider: &str, outcome: &'static str) {
    counter!(PROVIDER_ATTEMPTS_TOTAL, "provider" => provider.to_string(), "outcome" => outcome)
        .increment(1);
}

pub fn provider_retry(provider: &str) {
    counter!(PROVIDER_RETRIES_TOTAL, "provider" => provider.to_string()).increment(1);
}

pub fn provider_fallback(chain: &str) {
    counter!(PROVIDER_FALLBACKS_TOTAL, "chain" => chain.to_string()).increment(1);
}

pub fn circuit_state(provider: &str, state: u8) {
    gauge!(PROVIDER_CIRCUIT_STATE, "provider" => provider.to_string()).set(f64::from(state));
}

pub fn embed_queue(query: usize, bulk: usize) {
    gauge!(EMBED_QUEUE_DEPTH, "priority" => "query").set(query as f64);
    gauge!(EMBED_QUEUE_DEPTH, "priority" => "bulk").set(bulk as f64);
}

pub fn embed_batch(size: usize, took: Duration) {
    histogram!(EMBED_BATCH_SIZE).record(size as f64);
    histogram!(EMBED_DURATION_SECONDS).record(took.as_secs_f64());
}

pub fn vector_search(backend: &'static str, took: Duration) {
    histogram!(VECTOR_SEARCH_DURATION_SECONDS, "backend" => backend).record(took.as_secs_f64());
}

pub fn ingest_queue(jobs: usize) {
    gauge!(INGEST_QUEUE_JOBS).set(jobs as f64);
}

pub fn ingest_job(took: Duration) {
    histogram!(INGEST_JOB_DURATION_SECONDS).record(took.as_secs_f64());
}

pub fn ingest_reclaimed() {
    counter!(INGEST_JOBS_RECLAIMED_TOTAL).increment(1);
}

pub fn ingested(outcome: &'static str, chunks: usize) {
    counter!(INGEST_DOCUMENTS_TOTAL, "outcome" => outcome).increment(1);
    counter!(INGEST_CHUNKS_TOTAL).increment(chunks as u64);
}

const SAVED_HELP: &str = "USD not spent because the answer cache served the turn.";

pub fn cache_lookup(layer: &'static str, hit: bool) {
    counter!(CACHE_LOOKUPS_TOTAL, "layer" => layer, "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}

pub fn cache_saved(usd: f64) {
    cost::add(CACHE_SAVED_USD_TOTAL, SAVED_HELP, vec![], usd);
}

pub fn cache_entries(n: u64) {
    gauge!(CACHE_ENTRIES).set(n as f64);
}

pub fn cache_eviction() {
    counter!(CACHE_EVICTIONS_TOTAL).increment(1);
}

/// `route` is the route's bounded label (the API's route table gives it, never a raw path).
pub fn http_request(route: &'static str, status: u16, took: Duration) {
    counter!(HTTP_REQUESTS_TOTAL, "route" => route, "status" => status_class(status)).increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route).record(took.as_secs_f64());
}

const TENANT_COST_HELP: &str = "Upstream spend in USD settled against a tenant's budget.";

/// Tenant names come from config (bounded); never a user or key.
pub fn rate_limited(tenant: &str, limit: &'static str, scope: &'static str) {
    counter!(RATE_LIMITED_TOTAL, "tenant" => tenant.to_string(), "limit" => limit, "scope" => scope)
        .increment(1);
}

pub fn tenant_usage(tenant: &str, tokens: u64, usd: f64) {
    counter!(TENANT_TOKENS_TOTAL, "tenant" => tenant.to_string()).increment(tokens);
    cost::add(
        TENANT_COST_USD_TOTAL,
        TENANT_COST_HELP,
        vec![("tenant", tenant.to_string())],
        usd,
    );
}

pub fn auth_failure(reason: &'static str) {
    counter!(AUTH_FAILURES_TOTAL, "reason" => reason).increment(1);
}

pub fn screened(source: &'static str, rule: &'static str, action: &'static str) {
    counter!(SAFETY_SCREENED_TOTAL, "source" => source, "rule" => rule, "action" => action)
        .increment(1);
}

pub fn tool_call(tool: &str, status: &'static str, took: std::time::Duration) {
    counter!(TOOL_CALLS_TOTAL, "tool" => tool.to_string(), "status" => status).increment(1);
    histogram!(TOOL_CALL_DURATION_SECONDS, "tool" => tool.to_string()).record(took.as_secs_f64());
}

pub fn tool_refused(reason: &'static str) {
    counter!(TOOL_REFUSALS_TOTAL, "reason" => reason).increment(1);
}

/// The reasons of `confab_cache_rejections_total` (`cache::Rejection::as_str`).
pub const CACHE_REJECTION_REASONS: &[&str] = &[
    "numbers",
    "negation",
    "antonym",
    "entity",
    "question_word",
    "order",
    "wording",
];

/// A semantic near match the cache's check turned down.
pub fn cache_rejected(reason: &'static str) {
    counter!(CACHE_REJECTIONS_TOTAL, "reason" => reason).increment(1);
}

/// Spans of one export batch: accepted by the collector, or lost.
pub fn trace_spans(exported: bool, n: usize) {
    let name = if exported {
        TRACE_SPANS_EXPORTED_TOTAL
    } else {
        TRACE_SPANS_DROPPED_TOTAL
    };
    counter!(name).increment(n as u64);
}

pub fn mcp_server_up(server: &str, up: bool) {
    gauge!(MCP_SERVER_UP, "server" => server.to_string()).set(if up { 1.0 } else { 0.0 });
}

pub fn redacted(kind: &'static str, n: u64) {
    counter!(SAFETY_REDACTIONS_TOTAL, "kind" => kind).increment(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_follows_prometheus_naming() {
        let mut names = std::collections::HashSet::new();
        for &(name, kind, help) in CATALOGUE {
            assert!(name.starts_with("confab_"), "{name}");
            assert!(names.insert(name), "{name} described twice");
            assert!(!help.is_empty(), "{name} has no help");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
                Kind::Histogram(Unit::Seconds) => assert!(name.ends_with("_seconds"), "{name}"),
                Kind::Histogram(_) => {}
            }
        }
    }

    #[test]
    fn every_histogram_has_buckets_set_at_install() {
        for &(name, kind, _) in CATALOGUE {
            if matches!(kind, Kind::Histogram(_)) {
                assert!(
                    BUCKETED.iter().any(|(b, _)| *b == name),
                    "{name} has no buckets"
                );
            }
        }
    }

    #[test]
    fn status_classes_are_five() {
        let classes: std::collections::HashSet<_> = [100, 204, 302, 404, 429, 500, 503, 999]
            .map(status_class)
            .into();
        assert_eq!(classes.len(), 5);
        assert_eq!(status_class(429), "4xx");
    }

    /// The series made at boot come from the labels passed in, and render.
    #[test]
    fn boot_series_come_from_the_labels_given() {
        let Some(handle) = install() else {
            return; // another recorder owns this test process
        };
        init_series(&BootLabels {
            providers: &["p-one", "extractive"],
            breakers: &["p-one"],
            chains: &["c-one"],
            tenants: &["t-one".to_string()],
            limits: &["requests_per_min"],
        });
        let out = render(&handle);
        assert!(out.contains("confab_provider_circuit_state{provider=\"p-one\"}"));
        assert!(!out.contains("confab_provider_circuit_state{provider=\"extractive\"}"));
        assert!(out.contains("confab_provider_fallbacks_total{chain=\"c-one\"}"));
        assert!(
            out.lines()
                .any(|l| l.starts_with("confab_rate_limited_total{")
                    && l.contains("tenant=\"t-one\"")
                    && l.contains("limit=\"requests_per_min\"")
                    && l.contains("scope=\"user\""))
        );
    }
}
