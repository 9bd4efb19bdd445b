//! Upstream health: every configured provider is asked `GET {base_url}/models` at start and
//! then periodically. The result, with the provider's circuit-breaker state, is in `/readyz`
//! and in the log when it changes — so "the local model server did not start" is visible
//! while confab keeps answering through the rest of the chain.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{ProviderEntry, ProviderKind};

/// The last probe of one upstream.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The upstream answered its model list with 2xx.
    pub ok: bool,
    /// What it answered, or why it could not be reached.
    pub detail: String,
    pub checked_ms: u64,
}

/// Probe results by provider name.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    probes: Mutex<BTreeMap<String, Probe>>,
}

impl UpstreamHealth {
    pub fn snapshot(&self) -> BTreeMap<String, Probe> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, name: &str, probe: Probe) {
        let mut g = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let changed = g.get(name).is_none_or(|old| old.ok != probe.ok);
        if changed {
            if probe.ok {
                tracing::info!(provider = name, detail = %probe.detail, "upstream reachable");
            } else {
                tracing::warn!(provider = name, detail = %probe.detail, "upstream unreachable; the chain falls back past it");
            }
        }
        g.insert(name.to_string(), probe);
    }
}

async fn probe(client: &reqwest::Client, entry: &ProviderEntry) -> Probe {
    let url = format!("{}/models", entry.base_url.trim_end_matches('/'));
    let mut req = client.get(&url);
    let key = entry.api_key.expose();
    match entry.kind {
        ProviderKind::Anthropic => {
            req = req
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01");
        }
        _ if !key.is_empty() => req = req.bearer_auth(key),
        _ => {}
    }
    let checked_ms = crate::protocol::unix_ms();
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Probe {
            ok: true,
            detail: format!("GET {url}: {}", resp.status()),
            checked_ms,
        },
        Ok(resp) => Probe {
            ok: false,
            detail: format!("GET {url}: {}", resp.status()),
            checked_ms,
        },
        Err(e) => Probe {
            ok: false,
            detail: format!("GET {url}: {}", causes(&e)),
            checked_ms,
        },
    }
}

/// An error with its causes ("error sending request: … Connection refused").
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// Probes every provider now and then every `every`, until `stop`.
pub fn spawn(
    health: std::sync::Arc<UpstreamHealth>,
    providers: BTreeMap<String, ProviderEntry>,
    every: Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the upstream probe client");
                return;
            }
        };
        loop {
            for (name, entry) in &providers {
                let p = probe(&client, entry).await;
                health.record(name, p);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}
