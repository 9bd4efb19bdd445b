//! One attempt of one chain link: open the stream, enforce the link's timeouts, optionally
//! hold the first characters for a refusal check, and stream the rest to the sink.

use std::time::Duration;
use tracing::Instrument as _;

use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::TurnSink;
use super::chain::{Chain, Link};
use super::coalesce::Coalescer;
use crate::config::{SafetyConfig, ms};
use crate::error::ErrorCode;
use crate::protocol::{AttemptOutcome, AttemptRecord};
use crate::providers::{
    CallBuilder, ChatRequest, ProviderError, ProviderStream, StreamEvent, ToolCallDelta,
    UpstreamFinish,
};
use crate::safety::Redactor;

/// What the turn has streamed so far, across attempts.
#[derive(Default)]
pub struct Progress {
    pub first_token: Option<Instant>,
    /// When the last delta went out, for the inter-token gap metric.
    pub last_token: Option<Instant>,
    /// Deltas that reached clients; once non-zero the turn is committed to its model.
    pub deltas: u64,
    pub usage: Option<(u64, u64)>,
    pub attempts: Vec<AttemptRecord>,
    /// The text that reached clients.
    pub answer: String,
    /// Holds each unfinished word back until it can be checked for secrets.
    pub redactor: Option<Redactor>,
    /// What each attempt that consumed upstream tokens cost, escalations and retries
    /// included: every one of them is billed, not just the last link.
    pub charges: Vec<Charge>,
    /// The model's tool calls in this round, assembled from their pieces.
    pub calls: CallBuilder,
    /// Rounds of server-side tool calls run so far: after one, the turn keeps its model.
    pub tool_rounds: u32,
    /// Released text held back to go out with the next pieces as one delta.
    pub coalesce: Coalescer,
}

/// The cost of one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charge {
    /// Tokens booked against the tenant's token budget (0 for the local extractive link).
    pub tokens: u64,
    pub usd: f64,
}

/// What one attempt consumed upstream.
#[derive(Debug, Default)]
struct Meter {
    usage: Option<(u64, u64)>,
    /// Text pieces the upstream generated, shown or held back.
    generated: u64,
}

impl Meter {
    /// Reported usage, or the prompt estimate and the pieces generated; `None` when the
    /// upstream generated nothing and reported nothing (a refused connection, an error
    /// status, an open breaker: nothing consumed).
    fn charge(&self, link: &Link, prompt_tokens: u64) -> Option<Charge> {
        let (tokens_in, tokens_out) = match self.usage {
            Some(u) => u,
            None if self.generated > 0 => (prompt_tokens, self.generated),
            None => return None,
        };
        let usd = link.entry.cost_usd(tokens_in, tokens_out);
        let tokens = if link.is_extractive() {
            0
        } else {
            tokens_in.saturating_add(tokens_out)
        };
        Some(Charge { tokens, usd })
    }
}

impl Progress {
    pub fn new(safety: &SafetyConfig) -> Self {
        Self {
            redactor: Redactor::new(safety.redact_secrets, safety.redact_emails),
            ..Self::default()
        }
    }

    /// Something (text or a tool call) reached the client: the turn keeps its model.
    pub fn committed(&self) -> bool {
        self.deltas > 0 || !self.calls.is_empty() || self.tool_rounds > 0
    }

    /// Marks the first output of the turn and the gap since the previous one.
    fn stamp(&mut self) {
        let now = Instant::now();
        if self.first_token.is_none() {
            self.first_token = Some(now);
        }
        if let Some(prev) = self.last_token.replace(now) {
            crate::metrics::inter_token(now.duration_since(prev));
        }
    }
}

/// One attempt's inputs.
pub struct Attempt<'a> {
    pub sink: &'a dyn TurnSink,
    pub turn_id: Uuid,
    pub link: &'a Link,
    pub request: &'a ChatRequest,
    pub cancel: &'a CancellationToken,
    /// The turn's deadline (the attempt's own is never later).
    pub deadline: Instant,
    /// Hold the first characters back and check them against this chain's refusal patterns.
    pub refusal_probe: Option<&'a Chain>,
    /// The request's estimated prompt tokens, for an attempt whose upstream reports no usage.
    pub prompt_tokens: u64,
    /// Send the model's call pieces to the sink (the client runs its tools).
    pub forward_calls: bool,
}

/// How one attempt ended.
pub enum AttemptEnd {
    Done(UpstreamFinish),
    Cancelled,
    /// Finished without text.
    Empty,
    /// Began with a refusal (nothing was shown).
    Refused,
    Failed {
        error: Option<ProviderError>,
        /// Set when the failure was a timeout, with its description.
        timeout_msg: Option<String>,
    },
}

impl AttemptEnd {
    /// The record clients see in `metrics.attempts`.
    pub fn record(&self, link: &Link, took: Duration) -> AttemptRecord {
        let (outcome, error, status) = match self {
            AttemptEnd::Done(_) => (AttemptOutcome::Ok, None, None),
            AttemptEnd::Cancelled => (AttemptOutcome::Cancelled, None, None),
            AttemptEnd::Empty => (AttemptOutcome::Empty, None, None),
            AttemptEnd::Refused => (AttemptOutcome::Refused, None, None),
            AttemptEnd::Failed {
                timeout_msg: Some(_),
                ..
            } => (
                AttemptOutcome::Timeout,
                Some(ErrorCode::UpstreamTimeout),
                None,
            ),
            AttemptEnd::Failed { error, .. } => (
                AttemptOutcome::Error,
                error.as_ref().map(ErrorCode::from),
                match error {
                    Some(ProviderError::Status { status, .. }) => Some(*status),
                    _ => None,
                },
            ),
        };
        record(link, outcome, took, error, status)
    }
}

/// Builds an attempt record.
pub fn record(
    link: &Link,
    outcome: AttemptOutcome,
    took: Duration,
    error: Option<ErrorCode>,
    status: Option<u16>,
) -> AttemptRecord {
    AttemptRecord {
        provider: link.name.clone(),
        model: link.provider.model().to_string(),
        outcome,
        duration_ms: took.as_millis() as u64,
        error,
        status,
    }
}

fn failed_timeout(msg: String) -> AttemptEnd {
    AttemptEnd::Failed {
        error: None,
        timeout_msg: Some(msg),
    }
}

fn failed(error: ProviderError) -> AttemptEnd {
    AttemptEnd::Failed {
        error: Some(error),
        timeout_msg: None,
    }
}

/// The attempt's two deadlines: the first token's, and the whole attempt's.
struct Clock {
    first: Instant,
    whole: Instant,
}

impl Clock {
    fn start(link: &Link, turn_deadline: Instant) -> Self {
        let now = Instant::now();
        let whole = (now + ms(link.entry.total_timeout_ms)).min(turn_deadline);
        let first = (now + ms(link.entry.first_token_timeout_ms)).min(whole);
        Self { first, whole }
    }
}

/// Holds the first characters of an answer until they can be checked for a refusal.
struct RefusalProbe<'a> {
    chain: Option<&'a Chain>,
    held: String,
}

/// The held text began with a refusal.
struct Refused;

impl<'a> RefusalProbe<'a> {
    fn new(chain: Option<&'a Chain>) -> Self {
        Self {
            chain,
            held: String::new(),
        }
    }

    /// The text to release now, if any.
    fn feed(&mut self, text: String) -> Result<Option<String>, Refused> {
        let Some(chain) = self.chain else {
            return Ok(Some(text));
        };
        self.held.push_str(&text);
        if self.held.chars().count() < chain.refusal_probe_chars {
            return Ok(None);
        }
        self.close()
    }

    /// The stream ended (or enough is held): decide on what is held.
    fn close(&mut self) -> Result<Option<String>, Refused> {
        let Some(chain) = self.chain.take() else {
            return Ok(None);
        };
        if self.held.is_empty() {
            return Ok(None);
        }
        let head = self.held.trim_start().to_lowercase();
        if chain.refusal_patterns.iter().any(|p| head.starts_with(p)) {
            return Err(Refused);
        }
        Ok(Some(std::mem::take(&mut self.held)))
    }
}

/// Passes upstream text through the redactor, then on to clients.
fn release(a: &Attempt<'_>, progress: &mut Progress, text: String) {
    let text = match progress.redactor.as_mut() {
        Some(r) => r.push(&text),
        None => text,
    };
    if !text.is_empty() {
        emit(a, progress, text);
    }
}

/// Releases the word the redactor still holds (the answer is complete).
fn flush(a: &Attempt<'_>, progress: &mut Progress) {
    let rest = progress
        .redactor
        .as_mut()
        .map(|r| r.finish())
        .unwrap_or_default();
    if !rest.is_empty() {
        emit(a, progress, rest);
    }
    send_held(a, progress);
}

fn emit(a: &Attempt<'_>, progress: &mut Progress, text: String) {
    progress.stamp();
    progress.deltas += 1;
    progress.answer.push_str(&text);
    if let Some(text) = progress.coalesce.push(text, Instant::now()) {
        a.sink.delta(a.turn_id, text);
    }
}

/// Sends the text the coalescer holds: its window closed, or something must not overtake it.
fn send_held(a: &Attempt<'_>, progress: &mut Progress) {
    if let Some(text) = progress.coalesce.take(Instant::now()) {
        a.sink.delta(a.turn_id, text);
    }
}

/// A piece of a tool call goes to the client once the text before it is decided (the
/// refusal probe) and released (the redactor's held word).
fn call_piece(
    a: &Attempt<'_>,
    progress: &mut Progress,
    probe: &mut RefusalProbe<'_>,
    mut piece: ToolCallDelta,
) -> Result<(), Refused> {
    if let Some(text) = probe.close()? {
        release(a, progress, text);
    }
    flush(a, progress);
    progress.stamp();
    progress.calls.push(&mut piece);
    if a.forward_calls {
        a.sink.tool_call(a.turn_id, piece);
    }
    Ok(())
}

/// Opens the upstream stream before the first-token deadline.
async fn open(a: &Attempt<'_>, clock: &Clock) -> Result<ProviderStream, AttemptEnd> {
    let opened = tokio::select! {
        biased;
        _ = a.cancel.cancelled() => return Err(AttemptEnd::Cancelled),
        r = timeout_at(clock.first, a.link.provider.stream(a.request)) => r,
    };
    match opened {
        Err(_) => Err(failed_timeout(first_token_late(a.link))),
        Ok(Err(err)) => Err(failed(err)),
        Ok(Ok(s)) => Ok(s),
    }
}

fn first_token_late(link: &Link) -> String {
    format!(
        "{}: no first token within {} ms",
        link.name, link.entry.first_token_timeout_ms
    )
}

/// What the upstream stream gave, or that held text is due.
enum Next {
    Event(StreamEvent),
    /// The coalescing window of the held text closed first.
    HeldDue,
    End,
}

/// The next upstream event within the deadline that applies now, or the held text's due time
/// (`held_due`) if that comes first.
async fn next_event(
    a: &Attempt<'_>,
    clock: &Clock,
    stream: &mut ProviderStream,
    started: bool,
    held_due: Option<Instant>,
) -> Result<Next, AttemptEnd> {
    let e = &a.link.entry;
    let limit = if !started {
        clock.first
    } else {
        (Instant::now() + ms(e.idle_timeout_ms)).min(clock.whole)
    };
    let next = tokio::select! {
        biased;
        _ = a.cancel.cancelled() => return Err(AttemptEnd::Cancelled),
        r = timeout_at(limit, stream.next()) => r,
        // Dropping `next()` unpolled loses nothing: the stream keeps its item for the next call.
        _ = sleep_until(held_due.unwrap_or(limit)), if held_due.is_some() => return Ok(Next::HeldDue),
    };
    match next {
        Err(_) if !started => Err(failed_timeout(first_token_late(a.link))),
        Err(_) if limit >= clock.whole => Err(failed_timeout(format!(
            "{}: attempt exceeded its deadline",
            a.link.name
        ))),
        Err(_) => Err(failed_timeout(format!(
            "{}: no token for {} ms",
            a.link.name, e.idle_timeout_ms
        ))),
        Ok(None) => Ok(Next::End),
        Ok(Some(Err(err))) => Err(failed(err)),
        Ok(Some(Ok(ev))) => Ok(Next::Event(ev)),
    }
}

/// Runs one attempt against `a.link` within the turn's deadline, and books what it consumed.
pub async fn run(a: &Attempt<'_>, progress: &mut Progress) -> AttemptEnd {
    let mut meter = Meter::default();
    progress.coalesce.set_window(a.sink.coalesce_window());
    let end = metered(a, progress, &mut meter).await;
    // However the attempt ended, text already released reaches clients before what follows.
    send_held(a, progress);
    if let Some(charge) = meter.charge(a.link, a.prompt_tokens) {
        progress.charges.push(charge);
    }
    end
}

async fn metered(a: &Attempt<'_>, progress: &mut Progress, meter: &mut Meter) -> AttemptEnd {
    // Words held from an earlier, failed attempt never reached anyone: drop them.
    if let Some(r) = progress.redactor.as_mut() {
        r.discard();
    }
    let clock = Clock::start(a.link, a.deadline);
    // Until the first event: `first_token`; from it on: `stream` (trace spans).
    let mut waiting = Some(tracing::debug_span!("first_token"));
    let mut streaming = tracing::Span::none();
    let opening = open(a, &clock).instrument(waiting.clone().unwrap_or_else(tracing::Span::none));
    let mut stream = match opening.await {
        Ok(s) => s,
        Err(end) => return end,
    };
    let mut probe = RefusalProbe::new(a.refusal_probe);
    let mut finish = None;
    // Whether this attempt's upstream sent anything yet: until then the first-token
    // deadline applies (a later tool round's longer prompt gets it too).
    let mut streamed = false;
    loop {
        let span = waiting.clone().unwrap_or_else(|| streaming.clone());
        let held_due = progress.coalesce.due();
        let next = next_event(a, &clock, &mut stream, streamed, held_due).instrument(span);
        let event = match next.await {
            Ok(Next::Event(ev)) => ev,
            Ok(Next::HeldDue) => {
                send_held(a, progress);
                continue;
            }
            Ok(Next::End) => break,
            Err(end) => return end,
        };
        if waiting.take().is_some() {
            tracing::debug!(target: crate::telemetry::EVENTS, "first_token");
            streaming = tracing::debug_span!("stream");
        }
        match event {
            StreamEvent::Delta(text) => {
                streamed = true;
                meter.generated += 1;
                match probe.feed(text) {
                    Ok(Some(text)) => release(a, progress, text),
                    Ok(None) => {}
                    Err(Refused) => return AttemptEnd::Refused,
                }
            }
            StreamEvent::ToolCall(piece) => {
                streamed = true;
                meter.generated += 1;
                if call_piece(a, progress, &mut probe, piece).is_err() {
                    return AttemptEnd::Refused;
                }
            }
            StreamEvent::Finish(f) => finish = Some(f),
            StreamEvent::Usage { input, output } => {
                meter.usage = Some((input, output));
                progress.usage = Some((input, output));
            }
        }
    }
    match probe.close() {
        Ok(Some(text)) => release(a, progress, text),
        Ok(None) => {}
        Err(Refused) => return AttemptEnd::Refused,
    }
    flush(a, progress);
    if !progress.committed() {
        return AttemptEnd::Empty;
    }
    // An upstream that sent calls but said "stop" still asked for them; cut by length,
    // the calls may be incomplete, and the finish says so.
    let finish = match finish {
        Some(UpstreamFinish::Length) => UpstreamFinish::Length,
        _ if !progress.calls.is_empty() => UpstreamFinish::ToolCalls,
        f => f.unwrap_or(UpstreamFinish::Stop),
    };
    AttemptEnd::Done(finish)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(probe_chars: usize) -> Chain {
        Chain {
            name: "c".into(),
            links: Vec::new(),
            escalate_on_refusal: true,
            refusal_probe_chars: probe_chars,
            refusal_patterns: vec!["i'm sorry".into()],
        }
    }

    #[test]
    fn the_probe_holds_text_until_it_can_decide() {
        let c = chain(10);
        let mut p = RefusalProbe::new(Some(&c));
        assert!(matches!(p.feed("Paris ".into()), Ok(None)));
        match p.feed("is the capital".into()) {
            Ok(Some(t)) => assert_eq!(t, "Paris is the capital"),
            _ => panic!("should release once enough is held"),
        }
        assert!(
            matches!(p.feed("!".into()), Ok(Some(t)) if t == "!"),
            "then passes through"
        );
    }

    #[test]
    fn the_probe_catches_a_refusal_even_in_a_short_answer() {
        let c = chain(50);
        let mut p = RefusalProbe::new(Some(&c));
        assert!(matches!(p.feed("  I'm sorry, I can't".into()), Ok(None)));
        assert!(p.close().is_err());
        let mut p = RefusalProbe::new(Some(&c));
        assert!(matches!(p.feed("Yes.".into()), Ok(None)));
        assert!(matches!(p.close(), Ok(Some(t)) if t == "Yes."));
    }

    #[test]
    fn without_a_probe_text_passes_at_once() {
        let mut p = RefusalProbe::new(None);
        assert!(matches!(p.feed("I'm sorry".into()), Ok(Some(_))));
        assert!(matches!(p.close(), Ok(None)));
    }
}
