//! A chat turn, in phases over one [`turn::Turn`]: admit (draining, chain, prompt screen) →
//! cache → retrieve → plan (request, routing, reservation) → generate (the fallback loop) →
//! settle (billing, history, cache write, metrics, the one `end`).
//!
//! Fallback happens only before the first token reaches clients: retries with backoff, then
//! the next link. After that, a failure ends the turn with `error` + `end(error)` and the
//! partial answer is kept. The engine talks to whoever asked only through [`TurnSink`].

mod admit;
mod attempt;
pub mod chain;
mod coalesce;
mod generate;
mod plan;
mod prompt;
mod replay;
mod request;
mod retrieve;
mod rounds;
mod settle;
pub mod sink;
mod trace;
mod turn;

use std::sync::Arc;

use tracing::Instrument as _;

pub use self::request::{TurnOwner, TurnRequest};
pub use self::sink::{Rejection, TurnSink, TurnStart};
pub use self::trace::{Capture, turn_span};

use self::attempt::Progress;
use self::chain::Models;
use self::retrieve::Retrieved;
use self::turn::Turn;
use crate::cache::{AnswerCache, CacheHit};
use crate::config::{SafetyConfig, TurnConfig};
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;
use crate::limits::Limiter;
use crate::providers::BreakerState;
use crate::retrieval::Retrieval;
use crate::tools::ToolBox;

/// Runs turns through the configured fallback chains.
pub struct TurnEngine {
    models: Models,
    cfg: TurnConfig,
    retrieval: Option<Arc<Retrieval>>,
    cache: Option<Arc<AnswerCache>>,
    limits: Arc<Limiter>,
    safety: SafetyConfig,
    tools: Option<Arc<ToolBox>>,
    capture: Capture,
}

/// What the engine is built from.
pub struct EngineParts {
    pub models: Models,
    pub cfg: TurnConfig,
    pub retrieval: Option<Arc<Retrieval>>,
    pub cache: Option<Arc<AnswerCache>>,
    pub limits: Arc<Limiter>,
    pub safety: SafetyConfig,
    /// Server-side tools the model may call (rooms, the RAG alias).
    pub tools: Option<Arc<ToolBox>>,
    /// Turns whose texts go into their trace.
    pub capture: Capture,
}

impl TurnEngine {
    pub fn new(p: EngineParts) -> Self {
        Self {
            models: p.models,
            cfg: p.cfg,
            retrieval: p.retrieval,
            cache: p.cache,
            limits: p.limits,
            safety: p.safety,
            tools: p.tools,
            capture: p.capture,
        }
    }

    /// Whether `name` is a configured chain.
    pub fn has_chain(&self, name: &str) -> bool {
        self.models.chain(name).is_some()
    }

    /// The first of the client's sampling settings that a link of `chain` cannot honour:
    /// the setting, the link and why.
    pub fn refuses(
        &self,
        chain: &str,
        sampling: &crate::providers::Sampling,
    ) -> Option<(&'static str, String, &'static str)> {
        let chain = self.models.chain(chain)?;
        chain.links.iter().find_map(|l| {
            let kind = if l.is_extractive() {
                crate::config::ProviderKind::Extractive
            } else {
                l.entry.kind
            };
            let (setting, why) = sampling.unsupported(kind)?;
            Some((setting, l.name.clone(), why))
        })
    }

    /// The circuit breaker of a provider: closed, open or half_open.
    pub fn breaker_state(&self, provider: &str) -> Option<&'static str> {
        self.models.link(provider).map(|l| match l.breaker.state() {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        })
    }

    /// The default chain's name (`turn.chain`).
    pub fn default_chain(&self) -> &str {
        &self.cfg.chain
    }

    /// Runs one turn to its single `end` event. A bug that panics inside the turn still
    /// ends it (`error` + `end`) and leaves the room free for the next one.
    pub async fn run(&self, sink: &dyn TurnSink, req: TurnRequest, life: &Lifecycle) {
        use futures_util::FutureExt;
        let turn_id = req.turn_id;
        let phases = std::panic::AssertUnwindSafe(self.phases(sink, req, life));
        if phases.catch_unwind().await.is_err() {
            tracing::error!(%turn_id, "a turn panicked; it ends with an error");
            let message = "the turn failed on a bug; the server log has the details";
            sink.abort_turn(turn_id, Rejection::new(ErrorCode::Internal, message));
        }
    }

    /// The phases, each in its own span (debug level: built only when traces are
    /// exported), inside the turn's span (the caller's; see [`turn_span`]).
    async fn phases(&self, sink: &dyn TurnSink, req: TurnRequest, life: &Lifecycle) {
        let span = tracing::Span::current();
        let admitted = tracing::debug_span!("admit").in_scope(|| self.admit(sink, req, life));
        let mut turn = match admitted {
            Ok(turn) => turn,
            Err((turn_id, rejection)) => return sink.reject_turn(turn_id, rejection),
        };
        turn.span = span;
        if let Some(hit) = self.lookup(&turn, None) {
            return replay::replay(&turn, hit);
        }
        let grounded = match self.retrieve(&turn).await {
            Retrieved::Cached(hit) => return replay::replay(&turn, hit),
            Retrieved::Grounded(g) => g,
        };
        let augment = tracing::debug_span!("augment");
        let plan = match self.plan(&turn, &grounded).instrument(augment).await {
            Ok(plan) => plan,
            Err(rejection) => return sink.reject_turn(turn.req.turn_id, rejection),
        };
        let cancel = life.turn_cancel.child_token();
        if !plan::begin(&turn, &plan, &grounded, cancel.clone()) {
            return;
        }
        let progress = Progress::new(&self.safety);
        let mut plan = plan;
        let generated = self.generate(&turn, &mut plan, cancel, progress).await;
        let settle = tracing::debug_span!("settle");
        settle.in_scope(|| self.settle(turn, plan, grounded, generated, life));
    }

    /// The cache lookup for one layer (exact without a vector, semantic with one), counted
    /// in the metrics.
    fn lookup(&self, turn: &Turn<'_>, vector: Option<&[f32]>) -> Option<CacheHit> {
        let (cache, scope) = (self.cache.as_ref()?, turn.scope.as_ref()?);
        let layer = if vector.is_some() {
            "semantic"
        } else {
            "exact"
        };
        let _span = tracing::debug_span!("cache.lookup", layer).entered();
        let hit = cache
            .lookup(&turn.tenant, scope, &turn.req.prompt, vector)
            .filter(|h| vector.is_none() || h.layer == crate::protocol::CacheLayer::Semantic);
        crate::metrics::cache_lookup(layer, hit.is_some());
        if hit.is_some() {
            trace::cached(&turn.span, layer);
        }
        hit
    }
}

#[cfg(test)]
mod tests;
