//! HTTP plumbing shared by the streaming providers: client construction, error statuses with
//! `Retry-After`, and the SSE event stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};

use super::{ProviderError, StreamEvent};
use crate::config::{ProviderEntry, ms};

/// Server-sent events from an upstream response body.
pub type SseStream =
    Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// One pooled client per provider, with its connect timeout.
pub fn client(entry: &ProviderEntry) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(ms(entry.connect_timeout_ms))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ProviderError::Connect(format!("cannot build HTTP client: {e}")))
}

/// Sends the request; a non-2xx answer becomes `Status` with `Retry-After` (seconds) and the
/// start of the body, a 2xx one an SSE stream.
pub async fn send_sse(rb: reqwest::RequestBuilder) -> Result<SseStream, ProviderError> {
    // The attempt's trace context goes upstream (W3C traceparent), when tracing is on.
    let mut trace = reqwest::header::HeaderMap::new();
    crate::telemetry::inject(&mut trace);
    let resp = rb.headers(trace).send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            ProviderError::Connect(e.to_string())
        } else {
            ProviderError::Transport(e.to_string())
        }
    })?;
    let status = resp.status();
    if !status.is_success() {
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        return Err(ProviderError::Status {
            status: status.as_u16(),
            retry_after,
            body: text.chars().take(300).collect(),
        });
    }
    Ok(Box::pin(resp.bytes_stream().eventsource()))
}

/// What the next SSE event was, with transport problems already mapped: a body that ends or
/// breaks before the provider saw its end marker is a cut stream.
enum Next {
    Event(Event),
    End,
    Failed(ProviderError),
}

/// Reads the next event; `finished` says whether the provider already saw its finish marker.
async fn next_event(events: &mut SseStream, finished: bool) -> Next {
    match events.next().await {
        None if finished => Next::End,
        None => Next::Failed(ProviderError::Cut),
        Some(Err(EventStreamError::Transport(e))) => Next::Failed(if finished {
            ProviderError::Transport(e.to_string())
        } else {
            ProviderError::Cut
        }),
        Some(Err(e)) => Next::Failed(ProviderError::Malformed(e.to_string())),
        Some(Ok(ev)) => Next::Event(ev),
    }
}

/// A JSON parse failure, with the start of the offending chunk.
pub fn malformed(e: serde_json::Error, data: &str) -> ProviderError {
    let shown: String = data.chars().take(120).collect();
    ProviderError::Malformed(format!("{e} in chunk {shown:?}"))
}

/// What a provider's parser made of one SSE data payload.
pub enum Flow {
    Continue,
    /// The provider's end marker (`[DONE]`, `message_stop`): no more events.
    End,
}

/// Events parsed so far, and whether the provider's finish marker was seen (a stream that
/// ends after it is complete; before it, cut).
#[derive(Default)]
pub struct Parsed {
    pub pending: VecDeque<StreamEvent>,
    pub finished: bool,
}

/// The read loop every streaming provider shares: queued events first, then the next
/// non-empty SSE payload through the provider's `parse`, transport problems mapped once.
pub struct SseEvents {
    events: SseStream,
    parsed: Parsed,
    done: bool,
}

impl SseEvents {
    pub fn new(events: SseStream) -> Self {
        Self {
            events,
            parsed: Parsed::default(),
            done: false,
        }
    }

    /// The next event; `None` once the stream ended cleanly.
    pub async fn next(
        &mut self,
        mut parse: impl FnMut(&str, &mut Parsed) -> Result<Flow, ProviderError>,
    ) -> Option<Result<StreamEvent, ProviderError>> {
        loop {
            if let Some(ev) = self.parsed.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            let event = match next_event(&mut self.events, self.parsed.finished).await {
                Next::Event(ev) => ev,
                Next::End => {
                    self.done = true;
                    return None;
                }
                Next::Failed(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            match parse(data, &mut self.parsed) {
                Ok(Flow::Continue) => {}
                Ok(Flow::End) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
