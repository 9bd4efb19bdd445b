//! Rounds of server-side tool calls: the model answers, and while its answer is calls of
//! confab's tools they are run (`tools::ToolBox`) and the model is asked again with their
//! results, on the link that made the calls (once tools ran the turn keeps its model),
//! within the turn's call budget and cost ceiling. A client's tools end the turn at the
//! first call instead: the client runs them.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::TurnEngine;
use super::attempt::{Charge, Progress};
use super::generate::{self, Failure, Generated, Generation, Outcome};
use super::plan::Plan;
use super::turn::Turn;
use crate::config::ms;
use crate::error::ErrorCode;
use crate::protocol::EventBody;
use crate::providers::{ChatMessage, Role, Tools, UpstreamFinish};
use crate::tools::{Budget, Caller, ToolBox};

impl TurnEngine {
    /// Generates the answer, running the rounds of server-side tool calls it takes.
    pub(super) async fn generate(
        &self,
        turn: &Turn<'_>,
        plan: &mut Plan,
        cancel: CancellationToken,
        mut progress: Progress,
    ) -> Generated {
        let mut budget = Budget {
            calls_left: self.cfg.max_tool_calls,
            ceiling_usd: self.cfg.max_cost_usd,
            spent_usd: 0.0,
        };
        let deadline = turn.started + ms(self.cfg.deadline_ms);
        let mut start = plan.start;
        loop {
            let said = progress.answer.len();
            let generated = self
                .once(turn, plan, start, deadline, &cancel, progress)
                .await;
            let calls_ours = turn.req.tools.is_empty()
                && matches!(
                    generated.outcome,
                    Outcome::Finished(UpstreamFinish::ToolCalls)
                );
            let tb = match &self.tools {
                Some(tb) if calls_ours => tb,
                // Calls though no tool was offered (no MCP server configured): not the
                // client's to run either, so the turn simply ends.
                None if calls_ours => {
                    return Generated {
                        outcome: Outcome::Finished(UpstreamFinish::Stop),
                        ..generated
                    };
                }
                _ => return generated,
            };
            let Generated {
                last,
                progress: mut p,
                ..
            } = generated;
            start = last
                .as_ref()
                .and_then(|l| turn.chain.links.iter().position(|x| Arc::ptr_eq(x, l)))
                .unwrap_or(start);
            budget.spent_usd = p.charges.iter().map(|c| c.usd).sum();
            // Calls after the budget was spent (no tools were offered): refused and told,
            // but the model is not asked again, so a model that keeps calling cannot loop.
            let over_budget = budget.calls_left == 0;
            let round = Round {
                tb,
                turn,
                cancel: &cancel,
            };
            let ended = round.run(plan, &mut p, said, &mut budget).await;
            let ended = ended.or(over_budget.then_some(Outcome::Finished(UpstreamFinish::Stop)));
            if let Some(outcome) = ended {
                return Generated {
                    outcome,
                    last,
                    progress: p,
                };
            }
            progress = p;
        }
    }

    /// One pass of the fallback loop over the current request.
    async fn once(
        &self,
        turn: &Turn<'_>,
        plan: &Plan,
        start: usize,
        deadline: Instant,
        cancel: &CancellationToken,
        progress: Progress,
    ) -> Generated {
        let generation = Generation {
            sink: turn.sink,
            turn_id: turn.req.turn_id,
            chain: turn.chain,
            start,
            request: &plan.request,
            prompt_tokens: plan.prompt_tokens,
            cancel: cancel.clone(),
            deadline,
            deadline_ms: self.cfg.deadline_ms,
            forward_calls: !turn.req.tools.is_empty(),
        };
        generate::run(&generation, progress).await
    }
}

/// One round of server-side calls of a turn.
struct Round<'a> {
    tb: &'a ToolBox,
    turn: &'a Turn<'a>,
    cancel: &'a CancellationToken,
}

impl Round<'_> {
    /// Runs the calls the model just made (`p.calls`; its text since `said` came with them)
    /// and adds the calls and their results to the request. `Some` when the turn ends
    /// here: cancelled, or its cost ceiling reached.
    async fn run(
        &self,
        plan: &mut Plan,
        p: &mut Progress,
        said: usize,
        budget: &mut Budget,
    ) -> Option<Outcome> {
        let (turn, cancel) = (self.turn, self.cancel);
        let calls = std::mem::take(&mut p.calls).calls().to_vec();
        let emit = |ev: EventBody| turn.sink.turn_event(turn.req.turn_id, ev);
        let who = Caller {
            tenant: &turn.tenant,
            emit: &emit,
            cancel,
            sources: &plan.request.sources,
        };
        let result = self.tb.run_round(&who, &calls, budget).await;
        // Follow-up searches' sources are citable like the first ones.
        plan.request.sources.extend(result.sources);
        p.charges.push(Charge {
            tokens: 0,
            usd: result.cost_usd,
        });
        p.tool_rounds += 1;
        let text = p.answer.get(said..).unwrap_or_default().to_string();
        plan.request.messages.push(ChatMessage {
            role: Role::Assistant,
            content: text,
            tool_calls: calls,
            tool_call_id: None,
        });
        plan.request.messages.extend(result.messages);
        if cancel.is_cancelled() {
            return Some(Outcome::Cancelled);
        }
        if budget.spent() {
            let message = format!(
                "the turn reached its cost ceiling of {} USD (turn.max_cost_usd) before the model answered",
                budget.ceiling_usd
            );
            return Some(Outcome::Failed(Failure::new(
                ErrorCode::TurnBudgetSpent,
                message,
            )));
        }
        if budget.calls_left == 0 {
            // The model is asked to answer from what it has.
            plan.request.tools = Tools::default();
        }
        None
    }
}
