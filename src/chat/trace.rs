//! The turn's trace (see `telemetry/`): the `turn` span — the root of the turn's trace, or
//! the child of the context the client sent — its attributes once the turn is settled, the
//! span of each provider attempt, and the captured texts of a sampled turn. Attribute names
//! follow OpenTelemetry's GenAI conventions where they exist; nothing here carries prompt
//! or answer text except a capture.

use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::TurnRequest;
use super::chain::Link;
use crate::config::ProviderKind;
use crate::providers::Source;
use crate::safety::Redactor;

/// The span a turn runs in; every phase's span is its child.
pub fn turn_span(req: &TurnRequest) -> Span {
    let span = tracing::info_span!("turn", turn_id = %req.turn_id);
    if let Some(tp) = &req.trace {
        tp.adopt(&span);
    }
    span.set_attribute("gen_ai.operation.name", "chat");
    span.set_attribute("confab.tenant", req.owner.principal.tenant.to_string());
    span
}

/// `gen_ai.system` of a link.
fn system(link: &Link) -> &'static str {
    if link.is_extractive() {
        return "confab.extractive";
    }
    match link.entry.kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Extractive => "confab.extractive",
    }
}

/// The span of one attempt at `link` (the `retry`th retry of it).
pub(super) fn attempt_span(link: &Link, retry: u32) -> Span {
    let span = tracing::info_span!("provider.attempt", provider = %link.name, retry);
    span.set_attribute("gen_ai.system", system(link));
    span.set_attribute("gen_ai.request.model", link.provider.model().to_string());
    span
}

/// What the turn span says once the turn is settled.
pub(super) struct Settled<'a> {
    pub chain: &'a str,
    pub request_model: &'a str,
    pub response_model: &'a str,
    pub system: Option<&'a str>,
    pub tokens: (u64, u64),
    pub finish_reason: &'a str,
    pub cost_usd: f64,
    pub hits: Option<usize>,
    pub tool_rounds: u32,
}

/// Records the settled turn on its span.
pub(super) fn settled(span: &Span, s: &Settled<'_>) {
    span.set_attribute("confab.chain", s.chain.to_string());
    span.set_attribute("gen_ai.request.model", s.request_model.to_string());
    span.set_attribute("gen_ai.response.model", s.response_model.to_string());
    if let Some(system) = s.system {
        span.set_attribute("gen_ai.system", system.to_string());
    }
    span.set_attribute("gen_ai.usage.input_tokens", s.tokens.0 as i64);
    span.set_attribute("gen_ai.usage.output_tokens", s.tokens.1 as i64);
    let reasons = opentelemetry::Array::String(vec![s.finish_reason.to_string().into()]);
    span.set_attribute(
        "gen_ai.response.finish_reasons",
        opentelemetry::Value::Array(reasons),
    );
    span.set_attribute("confab.cost_usd", s.cost_usd);
    span.set_attribute("confab.tool_rounds", i64::from(s.tool_rounds));
    if let Some(hits) = s.hits {
        span.set_attribute("confab.retrieval.hits", hits as i64);
    }
}

/// The `gen_ai.system` of the link that answered, by its provider name.
pub(super) fn system_of<'a>(links: &'a [std::sync::Arc<Link>], provider: &str) -> Option<&'a str> {
    links.iter().find(|l| l.name == provider).map(|l| system(l))
}

/// Records which cache layer answered the turn.
pub(super) fn cached(span: &Span, layer: &'static str) {
    span.set_attribute("confab.cache.layer", layer);
}

/// Which turns have their texts attached to their trace (`telemetry.capture_ratio`), cut
/// to `chars` each, secrets and e-mail addresses redacted whatever `safety` says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capture {
    pub ratio: f64,
    pub chars: usize,
}

impl Capture {
    /// Attaches the prompt, the sources and the answer to `span` as one `capture` event,
    /// for the sampled fraction of recorded turns.
    pub(super) fn record(&self, span: &Span, prompt: &str, sources: &[Source], answer: &str) {
        let chosen = self.ratio > 0.0 && fastrand::f64() < self.ratio;
        if !chosen || crate::telemetry::trace_id(span).is_none() {
            return;
        }
        let Some(mut r) = Redactor::new(true, true) else {
            return;
        };
        let mut cut = |t: &str| r.apply(&t.chars().take(self.chars).collect::<String>());
        let listed: String = sources.iter().map(Source::listed).collect();
        let (prompt, sources, answer) = (cut(prompt), cut(&listed), cut(answer));
        span.in_scope(|| {
            tracing::event!(
                target: crate::telemetry::CAPTURE,
                tracing::Level::INFO,
                confab.prompt = prompt.as_str(),
                confab.sources = sources.as_str(),
                confab.answer = answer.as_str(),
                "capture"
            )
        });
    }
}
