//! One turn as it moves through the phases: what was asked, where its events go, and what
//! the admit phase settled (chain, tenant, history, cache scope, screen flag).

use tokio::time::Instant;

use super::chain::Chain;
use super::{TurnRequest, TurnSink};
use crate::cache::Scope;
use crate::protocol::TurnSnapshot;

pub(super) struct Turn<'a> {
    pub sink: &'a dyn TurnSink,
    pub req: TurnRequest,
    pub chain: &'a Chain,
    pub tenant: String,
    pub history: Vec<TurnSnapshot>,
    pub started: Instant,
    /// The screen rule the prompt tripped in flag mode (the turn goes on, marked).
    pub flagged: Option<&'static str>,
    /// The answer-cache scope; `None` when the cache is off for this turn.
    pub scope: Option<Scope>,
    /// The turn's span (its trace's attributes are recorded on it).
    pub span: tracing::Span,
}
