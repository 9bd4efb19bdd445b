//! One round of the model's calls: each judged in order against the turn's budgets and the
//! tenant's allow-list, the ones allowed run together (an MCP tool within its slot and
//! timeout, a follow-up search within its timeout), and every call answered — the model is
//! told what was refused or failed, so it can answer without it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::gate::NoSlot;
use super::mcp::{McpConn, Reply};
use super::search::{self, Numbering};
use super::{Runner, ToolBox, output};
use crate::config::{ToolLimits, ms};
use crate::protocol::{EventBody, ToolInput, ToolOutput, ToolStatus};
use crate::providers::{ChatMessage, Role, Source, ToolCall};
use crate::retrieval::Grounding;

/// What a turn may still spend on tools.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub calls_left: u32,
    /// `turn.max_cost_usd`; 0: no ceiling.
    pub ceiling_usd: f64,
    /// What the turn spent so far, models and tools.
    pub spent_usd: f64,
}

impl Budget {
    /// Whether the ceiling is reached.
    pub fn spent(&self) -> bool {
        self.ceiling_usd > 0.0 && self.spent_usd >= self.ceiling_usd
    }
}

/// The turn a round runs for.
pub struct Caller<'a> {
    pub tenant: &'a str,
    /// Sends a `tool` event to the turn's clients.
    pub emit: &'a (dyn Fn(EventBody) + Sync),
    pub cancel: &'a CancellationToken,
    /// The sources the model has been given so far, numbered.
    pub sources: &'a [Source],
}

/// What a round produced.
pub struct RoundResult {
    /// One `tool` message per call, in the order of the calls.
    pub messages: Vec<ChatMessage>,
    /// What the calls that ran cost.
    pub cost_usd: f64,
    /// Sources follow-up searches found that the model did not have, numbered after them.
    pub sources: Vec<Source>,
}

/// What happens to one call.
enum Verdict {
    Run(Arc<McpConn>, ToolLimits, serde_json::Map<String, Value>),
    /// A follow-up search for this query.
    Search(String),
    /// Not run; the model is told why.
    Refuse(String),
    /// Not runnable as asked (arguments that are not an object).
    Bad(String),
}

/// How one call ended, for its event and the model.
struct Report {
    status: ToolStatus,
    /// Shown to people (null when nothing came back).
    shown: ToolOutput,
    /// Told to the model.
    for_model: String,
    error: Option<String>,
    took: Duration,
    cost_usd: f64,
}

impl Report {
    fn failed(status: ToolStatus, error: String, took: Duration, cost_usd: f64) -> Self {
        Self {
            status,
            shown: ToolOutput::Other(Value::Null),
            for_model: format!("error: {error}"),
            error: Some(error),
            took,
            cost_usd,
        }
    }

    /// A finished search: what it found, or why it found nothing.
    fn searched(g: &Grounding, took: Duration) -> Self {
        let error = g
            .error
            .as_ref()
            .map(|(_, m)| format!("the search failed: {m}"));
        Self {
            status: match error {
                Some(_) => ToolStatus::Error,
                None => ToolStatus::Ok,
            },
            shown: ToolOutput::SearchDocuments(g.output()),
            for_model: search::for_model(g),
            error,
            took,
            cost_usd: 0.0,
        }
    }
}

/// A call's arguments as its events show them.
fn shown_input(call: &ToolCall) -> ToolInput {
    let input = serde_json::from_str::<Value>(&call.arguments)
        .unwrap_or_else(|_| Value::String(call.arguments.clone()));
    ToolInput::Other(input)
}

/// A call's event: `running` (no report) or its end.
fn event(
    call: &ToolCall,
    server: Option<&str>,
    input: &ToolInput,
    report: Option<&Report>,
) -> EventBody {
    let output = report.map_or(ToolOutput::Other(Value::Null), |r| r.shown.clone());
    EventBody::Tool {
        name: call.name.clone(),
        call_id: Some(call.id.clone()),
        server: server.map(str::to_string),
        status: report.map_or(ToolStatus::Running, |r| r.status),
        input: input.clone(),
        output,
        error: report.and_then(|r| r.error.clone()),
        duration_ms: report.map_or(0, |r| r.took.as_millis() as u64),
        cost_usd: report.map_or(0.0, |r| r.cost_usd),
    }
}

impl ToolBox {
    /// Runs the model's `calls` for the turn of `who`, sending each call's events.
    pub async fn run_round(
        &self,
        who: &Caller<'_>,
        calls: &[ToolCall],
        budget: &mut Budget,
    ) -> RoundResult {
        let mut reserved = 0.0;
        let verdicts: Vec<Verdict> = calls
            .iter()
            .map(|c| self.judge(who.tenant, c, budget, &mut reserved))
            .collect();
        let numbering = Numbering::new(who.sources);
        let runs = calls.iter().zip(verdicts).map(|(call, v)| {
            let span = tracing::debug_span!(
                "tool.call",
                gen_ai.operation.name = "execute_tool",
                gen_ai.tool.name = %call.name,
                gen_ai.tool.call.id = %call.id,
            );
            self.settle(call, v, who, &numbering).instrument(span)
        });
        let reports = futures_util::future::join_all(runs).await;
        let cost_usd: f64 = reports.iter().map(|r| r.cost_usd).sum();
        budget.spent_usd += cost_usd;
        let messages = calls
            .iter()
            .zip(&reports)
            .map(|(call, r)| ChatMessage {
                role: Role::Tool,
                content: r.for_model.clone(),
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id.clone()),
            })
            .collect();
        RoundResult {
            messages,
            cost_usd,
            sources: numbering.added(),
        }
    }

    /// Decides on one call, in the order the model made them; every call counts against
    /// `turn.max_tool_calls`, and an allowed call's cost is set aside in `reserved` so the
    /// calls of one round together stay under the ceiling.
    fn judge(
        &self,
        tenant: &str,
        call: &ToolCall,
        budget: &mut Budget,
        reserved: &mut f64,
    ) -> Verdict {
        if budget.calls_left == 0 {
            crate::metrics::tool_refused("max_tool_calls");
            return Verdict::Refuse(
                "this turn's tool calls are spent (turn.max_tool_calls); answer without tools"
                    .into(),
            );
        }
        budget.calls_left -= 1;
        let catalog = self.catalog();
        let entry = match catalog.get(&call.name) {
            Some(e) if self.allowed(tenant, &call.name) => e.clone(),
            _ => {
                crate::metrics::tool_refused("not_offered");
                return Verdict::Refuse(format!("tool {:?} is not available here", call.name));
            }
        };
        let cost = entry.limits.cost_usd;
        if budget.ceiling_usd > 0.0 && budget.spent_usd + *reserved + cost > budget.ceiling_usd {
            crate::metrics::tool_refused("max_cost_usd");
            return Verdict::Refuse(
                "this turn's cost ceiling (turn.max_cost_usd) leaves no room for this call".into(),
            );
        }
        let args = match serde_json::from_str::<Value>(&call.arguments) {
            Ok(Value::Object(m)) => m,
            _ if call.arguments.trim().is_empty() => serde_json::Map::new(),
            _ => return Verdict::Bad("the arguments are not a JSON object".into()),
        };
        *reserved += cost;
        match entry.runner {
            Runner::Search => match search::query(&args) {
                Ok(q) => Verdict::Search(q),
                Err(why) => Verdict::Bad(why),
            },
            Runner::Mcp(ref conn) => Verdict::Run(conn.clone(), entry.limits, args),
        }
    }

    /// Carries out a verdict: a refusal or a bad call is reported at once, an allowed call
    /// is announced (`running`), run and reported.
    async fn settle(
        &self,
        call: &ToolCall,
        verdict: Verdict,
        who: &Caller<'_>,
        numbering: &Numbering,
    ) -> Report {
        let emit = who.emit;
        let failed = |status, why| {
            let r = Report::failed(status, why, Duration::ZERO, 0.0);
            emit(event(call, None, &shown_input(call), Some(&r)));
            r
        };
        let (conn, limits, args) = match verdict {
            Verdict::Run(conn, limits, args) => (conn, limits, args),
            Verdict::Search(query) => return self.search(call, query, who, numbering).await,
            Verdict::Refuse(why) => return failed(ToolStatus::Refused, why),
            Verdict::Bad(why) => return failed(ToolStatus::Error, why),
        };
        let server = Some(conn.name.clone());
        let input = shown_input(call);
        emit(event(call, server.as_deref(), &input, None));
        let report = self.run(call, (&conn, limits), args, who.cancel).await;
        self.record(call, &report);
        emit(event(call, server.as_deref(), &input, Some(&report)));
        report
    }

    /// A follow-up search of the tenant's documents, within its timeout; its sources are
    /// numbered for the turn.
    async fn search(
        &self,
        call: &ToolCall,
        query: String,
        who: &Caller<'_>,
        numbering: &Numbering,
    ) -> Report {
        let t0 = Instant::now();
        let Some(search) = &self.search else {
            return Report::failed(
                ToolStatus::Error,
                "retrieval is off".into(),
                t0.elapsed(),
                0.0,
            );
        };
        let input = ToolInput::SearchDocuments(search.input(query.clone()));
        (who.emit)(event(call, None, &input, None));
        let run = tokio::time::timeout(
            ms(search::TIMEOUT_MS),
            search.run(who.tenant, query, numbering),
        );
        let report = tokio::select! {
            _ = who.cancel.cancelled() => Report::failed(ToolStatus::Error, "the turn was cancelled".into(), t0.elapsed(), 0.0),
            found = run => match found {
                Ok(g) => Report::searched(&g, t0.elapsed()),
                Err(_) => Report::failed(ToolStatus::Timeout, format!("no result within {} ms", search::TIMEOUT_MS), t0.elapsed(), 0.0),
            },
        };
        self.record(call, &report);
        (who.emit)(event(call, None, &input, Some(&report)));
        report
    }

    /// The call in the metrics and the log.
    fn record(&self, call: &ToolCall, report: &Report) {
        crate::metrics::tool_call(&self.label(&call.name), report.status.as_str(), report.took);
        tracing::debug!(tool = %call.name, status = report.status.as_str(), ms = report.took.as_millis() as u64, "tool call");
    }

    /// Runs one allowed call of `conn`'s tool within its timeout: a slot first, then the
    /// server's answer.
    async fn run(
        &self,
        call: &ToolCall,
        (conn, limits): (&McpConn, ToolLimits),
        args: serde_json::Map<String, Value>,
        cancel: &CancellationToken,
    ) -> Report {
        let t0 = Instant::now();
        let timeout = ms(limits.timeout_ms);
        let deadline = t0 + timeout;
        let cost = limits.cost_usd;
        let slot = tokio::select! {
            _ = cancel.cancelled() => Err(None),
            s = self.gates.take(&call.name, limits.max_concurrency, deadline, timeout) => s.map_err(Some),
        };
        let _slot = match slot {
            Ok(s) => s,
            Err(None) => {
                return Report::failed(
                    ToolStatus::Error,
                    "the turn was cancelled".into(),
                    t0.elapsed(),
                    0.0,
                );
            }
            Err(Some(NoSlot::Busy)) => {
                let why = format!(
                    "no free slot within {} ms (max_concurrency {})",
                    limits.timeout_ms, limits.max_concurrency
                );
                return Report::failed(ToolStatus::Timeout, why, t0.elapsed(), 0.0);
            }
            Err(Some(NoSlot::Unavailable(e))) => {
                return Report::failed(
                    ToolStatus::Error,
                    format!("tool slots unavailable: {e}"),
                    t0.elapsed(),
                    0.0,
                );
            }
        };
        let answer = tokio::select! {
            _ = cancel.cancelled() => return Report::failed(ToolStatus::Error, "the turn was cancelled".into(), t0.elapsed(), cost),
            r = tokio::time::timeout_at(deadline, conn.call(&call.name, args)) => r,
        };
        let took = t0.elapsed();
        match answer {
            Err(_) => Report::failed(
                ToolStatus::Timeout,
                format!("no answer within {} ms", limits.timeout_ms),
                took,
                cost,
            ),
            Ok(Err(e)) => Report::failed(ToolStatus::Error, e, took, cost),
            Ok(Ok(reply)) => self.answered(reply, took, cost),
        }
    }

    /// What a call answered, made safe: cut, redacted, screened.
    fn answered(&self, reply: Reply, took: Duration, cost_usd: f64) -> Report {
        let checked = output::check(&reply.text, self.output_chars, self.redact);
        let (status, error) = match (reply.is_error, checked.withheld) {
            (true, _) => (
                ToolStatus::Error,
                Some("the tool reported an error".to_string()),
            ),
            (false, Some(rule)) => (
                ToolStatus::Error,
                Some(format!(
                    "output withheld from the model: it looks like a prompt injection ({rule})"
                )),
            ),
            (false, None) => (ToolStatus::Ok, None),
        };
        Report {
            status,
            shown: ToolOutput::Other(Value::String(checked.shown)),
            for_model: checked.for_model,
            error,
            took,
            cost_usd,
        }
    }
}
