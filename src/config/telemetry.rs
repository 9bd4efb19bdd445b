//! `[telemetry]`: OpenTelemetry traces of turns and uploads, exported over OTLP/HTTP.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

/// Where traces go and how many. Off (no exporter, no cost) while `otlp_endpoint` is unset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`; `/v1/traces` is added
    /// unless the URL already ends with it). Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Fraction of new traces kept (0..=1); a request that comes with a sampled
    /// `traceparent` follows its parent's decision.
    pub sample_ratio: f64,
    /// Headers sent with every export, as `key=value,key2=value2` (the format of
    /// `OTEL_EXPORTER_OTLP_HEADERS`); a secret (API keys of hosted backends).
    pub headers: Secret,
    /// One export's time, after which its spans are dropped and counted.
    pub export_timeout_ms: u64,
    /// Spans waiting for export; past it new spans are dropped.
    pub max_queue_spans: usize,
    /// Fraction of turns whose redacted prompt, sources and answer are attached to the
    /// trace as span events (forensics). 0: never.
    pub capture_ratio: f64,
    /// Characters of each captured text kept.
    pub capture_chars: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "confab".into(),
            sample_ratio: 1.0,
            headers: Secret::default(),
            export_timeout_ms: 3_000,
            max_queue_spans: 4_096,
            capture_ratio: 0.0,
            capture_chars: 2_000,
        }
    }
}

impl TelemetryConfig {
    /// The export headers as pairs; `Err` names the malformed entry.
    pub fn header_pairs(&self) -> Result<Vec<(String, String)>, String> {
        let raw = self.headers.expose().trim();
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        raw.split(',')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                }
                _ => Err(format!(
                    "entry {} is not key=value",
                    kv.split('=').next().unwrap_or("")
                )),
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.otlp_endpoint
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL (OTLP/HTTP)",
            ));
        }
        for (key, v) in [
            ("telemetry.sample_ratio", self.sample_ratio),
            ("telemetry.capture_ratio", self.capture_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(key, "must be between 0 and 1"));
            }
        }
        if let Err(e) = self.header_pairs() {
            return Err(invalid("telemetry.headers", e));
        }
        if self.export_timeout_ms == 0 || self.max_queue_spans == 0 {
            return Err(invalid(
                "telemetry.export_timeout_ms",
                "export_timeout_ms and max_queue_spans must be at least 1",
            ));
        }
        Ok(())
    }
}
