//! W3C trace context (`traceparent`, `tracestate`): taken from a client's request, carried
//! with a prompt to the task (or node) that runs its turn, set as the parent of the turn's
//! span, and injected into every upstream request. With tracing off nothing is taken or
//! sent: the global propagator is the no-op one until [`super::start`] installs W3C's.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A trace context as it travels between tasks and nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceParent {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

/// Whether `v` has the shape of a version-00 `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn well_formed(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

impl TraceParent {
    /// The context a client sent, if its `traceparent` is well formed (a malformed one is
    /// ignored, as the W3C spec asks).
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let tp = traceparent?.trim();
        if !well_formed(tp) {
            return None;
        }
        Some(Self {
            traceparent: tp.to_ascii_lowercase(),
            tracestate: tracestate.unwrap_or_default().chars().take(512).collect(),
        })
    }

    /// The context of `span`; `None` when tracing is off.
    pub fn of(span: &tracing::Span) -> Option<Self> {
        let mut carrier: HashMap<String, String> = HashMap::new();
        let cx = span.context();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
        Some(Self {
            traceparent: carrier.remove("traceparent")?,
            tracestate: carrier.remove("tracestate").unwrap_or_default(),
        })
    }

    /// Makes this context the parent of `span` (which must not have started yet).
    pub fn adopt(&self, span: &tracing::Span) {
        let mut carrier = HashMap::new();
        carrier.insert("traceparent".to_string(), self.traceparent.clone());
        if !self.tracestate.is_empty() {
            carrier.insert("tracestate".to_string(), self.tracestate.clone());
        }
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let cx = propagator.extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// Adds the current span's context to an upstream request's headers.
pub fn inject(headers: &mut reqwest::header::HeaderMap) {
    let Some(tp) = TraceParent::of(&tracing::Span::current()) else {
        return;
    };
    let pairs = [
        ("traceparent", tp.traceparent),
        ("tracestate", tp.tracestate),
    ];
    for (name, value) in pairs {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value)
            && !value.is_empty()
        {
            headers.insert(name, v);
        }
    }
}

/// The trace id of `span` (32 hex digits) when it is being recorded and exported.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_taken() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::from_headers(Some(good), Some("k=v")).unwrap_or_default();
        assert_eq!(
            (tp.traceparent.as_str(), tp.tracestate.as_str()),
            (good, "k=v")
        );
        for bad in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-01",
            "garbage",
        ] {
            assert!(
                TraceParent::from_headers(Some(bad), None).is_none(),
                "{bad}"
            );
        }
        assert!(TraceParent::from_headers(None, None).is_none());
    }

    #[test]
    fn without_tracing_there_is_no_context_to_send() {
        let span = tracing::info_span!("t");
        assert!(TraceParent::of(&span).is_none());
        assert!(trace_id(&span).is_none());
        let mut h = reqwest::header::HeaderMap::new();
        inject(&mut h);
        assert!(h.is_empty());
    }
}
