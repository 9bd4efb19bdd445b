//! Plan: the request sent upstream, the link routing starts at, and the budget reserved for
//! the worst case; then `start` and the turn's opening tool events.

use tokio_util::sync::CancellationToken;

use super::chain::{Chain, RouteInput};
use super::retrieve::{self, Grounded};
use super::turn::Turn;
use super::{Rejection, TurnEngine, TurnStart, prompt};
use crate::error::ErrorCode;
use crate::limits::{Estimate, Reservation};
use crate::protocol::{
    EventBody, SCREEN_PROMPT, ScreenFlag, ScreenInput, ScreenOutput, ToolInput, ToolOutput,
};
use crate::providers::{ChatRequest, Sampling};

/// How the turn will be generated.
pub(super) struct Plan {
    pub request: ChatRequest,
    pub prompt_tokens: u64,
    /// Index of the first link to try.
    pub start: usize,
    pub reservation: Reservation,
}

impl TurnEngine {
    /// Builds the request, routes it and reserves its worst case; `Err` when a budget refuses.
    pub(super) async fn plan(
        &self,
        turn: &Turn<'_>,
        grounded: &Grounded,
    ) -> Result<Plan, Rejection> {
        let sources = grounded
            .grounding
            .as_ref()
            .map(|g| g.sources.clone())
            .unwrap_or_default();
        let mut request =
            prompt::build_request(&self.cfg.system_prompt, &turn.history, &turn.req, sources);
        if let Some(tb) = self
            .tools
            .as_ref()
            .filter(|_| turn.req.server_tools && request.tools.is_empty())
        {
            request.tools = tb.offered(&turn.tenant, grounded.grounding.is_some());
        }
        let prompt_tokens = prompt::estimate_tokens(&request);
        let route = RouteInput {
            prompt_tokens,
            sources: request.sources.len(),
            quality: turn.req.quality,
        };
        let start = self.models.start_index(turn.chain, route);
        let estimate = self.estimate(turn.chain, start, prompt_tokens, &request.sampling);
        let reservation = self
            .limits
            .reserve(&turn.req.owner.principal, estimate)
            .await
            .map_err(|e| Rejection {
                code: ErrorCode::from(&e),
                message: e.to_string(),
                retry_after: e.retry_after,
            })?;
        Ok(Plan {
            request,
            prompt_tokens,
            start,
            reservation,
        })
    }

    /// The most a turn may cost: its prompt (with a margin over the estimate) and the
    /// output cap, at every link from `start` on — each attempt that consumes tokens is
    /// billed, so a turn that escalates pays for each link it tried. The local extractive
    /// link costs nothing. The output cap is the client's where it set one lower.
    pub(super) fn estimate(
        &self,
        chain: &Chain,
        start: usize,
        prompt_tokens: u64,
        sampling: &Sampling,
    ) -> Estimate {
        let prompt = prompt_tokens + prompt_tokens / 4 + 16;
        chain.links[start..]
            .iter()
            .filter(|l| !l.is_extractive())
            .fold(Estimate::default(), |acc, l| {
                let out = match sampling.output_cap(l.entry.max_tokens) {
                    None => self.limits.default_output_tokens(),
                    Some(n) => u64::from(n),
                };
                let usd = l.entry.cost_usd(prompt, out);
                Estimate {
                    tokens: acc.tokens.saturating_add(prompt + out),
                    usd: acc.usd + usd,
                }
            })
    }
}

/// Announces `start` with the first link's model, then the screen flag and the retrieval
/// tool event. False when the turn was cancelled while queued.
pub(super) fn begin(
    turn: &Turn<'_>,
    plan: &Plan,
    grounded: &Grounded,
    cancel: CancellationToken,
) -> bool {
    let start = TurnStart {
        model: turn.chain.links[plan.start].provider.model(),
        chain: &turn.chain.name,
        cached: None,
        cancel,
    };
    if !turn.sink.begin_turn(&turn.req, start) {
        return false;
    }
    let id = turn.req.turn_id;
    if let Some(rule) = turn.flagged {
        turn.sink.turn_event(id, screen_event(rule));
    }
    if let Some(g) = &grounded.grounding {
        turn.sink.turn_event(id, retrieve::search_event(g));
    }
    true
}

/// The `screen_prompt` event of a flagged prompt.
fn screen_event(rule: &str) -> EventBody {
    EventBody::own_tool(
        SCREEN_PROMPT,
        ToolInput::ScreenPrompt(ScreenInput {
            source: "prompt".into(),
        }),
        ToolOutput::ScreenPrompt(ScreenOutput {
            flagged: vec![ScreenFlag {
                source: "prompt".into(),
                rule: rule.into(),
                action: "flagged".into(),
            }],
        }),
        0,
    )
}
