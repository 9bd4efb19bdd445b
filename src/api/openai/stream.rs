//! Streaming: a turn's events become OpenAI chunks — the role at `start`, the text and the
//! pieces of tool calls, then the finish reason with confab's extension, usage if asked, and
//! `[DONE]`.

use std::collections::VecDeque;

use futures_util::StreamExt;
use tokio::sync::mpsc::Receiver;

use super::sink::Out;
use super::summary::{Summary, finish_str};
use super::types::{
    ChatCompletionChunk, ChunkChoice, ChunkDelta, ChunkStream, FunctionChunk, ToolCallChunk, body,
};
use crate::protocol::EventBody;
use crate::providers::ToolCallDelta;

/// Turns a turn's events into OpenAI chunks: the role (at `start`), the text, then the finish
/// reason with confab's extension, usage if asked, and `[DONE]`.
struct Chunker {
    id: String,
    created: u64,
    summary: Summary,
    include_usage: bool,
}

impl Chunker {
    fn chunk(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.summary.model.clone(),
            choices,
            usage: None,
            confab: None,
            error: None,
            confab_tool: None,
        }
    }

    fn choice(delta: ChunkDelta, finish_reason: Option<String>) -> Vec<ChunkChoice> {
        vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason,
        }]
    }

    fn chunks(&mut self, out: Out) -> Vec<ChatCompletionChunk> {
        self.summary.add_out(&out);
        let ev = match out {
            Out::Event(ev) => ev,
            Out::Call(piece) => return vec![self.call_chunk(piece)],
        };
        match ev {
            EventBody::Start { .. } => {
                let delta = ChunkDelta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    tool_calls: None,
                };
                vec![self.chunk(Self::choice(delta, None))]
            }
            EventBody::Delta { text } => {
                let delta = ChunkDelta {
                    role: None,
                    content: Some(text),
                    tool_calls: None,
                };
                vec![self.chunk(Self::choice(delta, None))]
            }
            EventBody::Tool { .. } => {
                let Some(t) = super::summary::trace(&ev) else {
                    return Vec::new();
                };
                let mut c = self.chunk(Vec::new());
                c.confab_tool = Some(t);
                vec![c]
            }
            EventBody::Error { code, message, .. } => {
                let mut c = self.chunk(Vec::new());
                c.error = Some(body(code, message, None));
                vec![c]
            }
            EventBody::End { finish_reason, .. } => {
                let mut last = self.chunk(Self::choice(
                    ChunkDelta::default(),
                    Some(finish_str(Some(finish_reason))),
                ));
                last.confab = Some(self.summary.info());
                let mut out = vec![last];
                if self.include_usage {
                    let mut u = self.chunk(Vec::new());
                    u.usage = Some(self.summary.usage());
                    out.push(u);
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// A piece of a call as OpenAI streams it: id, type and name on the call's first piece.
    fn call_chunk(&self, piece: ToolCallDelta) -> ChatCompletionChunk {
        let opens = piece.id.is_some();
        let call = ToolCallChunk {
            index: piece.index,
            kind: opens.then(|| "function".to_string()),
            id: piece.id,
            function: FunctionChunk {
                name: piece.name,
                arguments: Some(piece.arguments),
            },
        };
        let delta = ChunkDelta {
            tool_calls: Some(vec![call]),
            ..ChunkDelta::default()
        };
        self.chunk(Self::choice(delta, None))
    }
}

/// Most text one merged chunk carries.
const MAX_MERGED_BYTES: usize = 16 * 1024;

/// A delta takes the deltas already waiting behind it. They wait only when the client reads
/// slower than the upstream writes (the chunks before them are not yet taken), and then one
/// chunk carries them all: the text is the same, with fewer chunks to encode and send. A
/// client that keeps up gets every piece as its own chunk. What is not a delta waits in
/// `held` for the next turn of the loop.
fn merge_waiting(ev: Out, rx: &mut Receiver<Out>, held: &mut Option<Out>) -> Out {
    let Out::Event(EventBody::Delta { mut text }) = ev else {
        return ev;
    };
    while text.len() < MAX_MERGED_BYTES {
        match rx.try_recv() {
            Ok(Out::Event(EventBody::Delta { text: more })) => text.push_str(&more),
            Ok(other) => {
                *held = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    Out::Event(EventBody::Delta { text })
}

/// What the chunk stream holds between polls: the events not yet turned into chunks, and
/// the chunks not yet taken.
struct Feed {
    conv: Chunker,
    early: std::vec::IntoIter<Out>,
    held: Option<Out>,
    rx: Receiver<Out>,
    ready: VecDeque<ChatCompletionChunk>,
    closed: bool,
}

impl Feed {
    /// The next item for the client: a chunk; `Some(None)` (the closing `[DONE]`) once the
    /// turn ended or its sender is gone; then `None`, the end of the stream.
    async fn next(&mut self) -> Option<Option<ChatCompletionChunk>> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Some(Some(c));
            }
            if self.closed {
                return None;
            }
            if self.conv.summary.end.is_some() {
                self.closed = true;
                return Some(None);
            }
            let ev = match self.held.take().or_else(|| self.early.next()) {
                Some(ev) => ev,
                None => match self.rx.recv().await {
                    Some(ev) => merge_waiting(ev, &mut self.rx, &mut self.held),
                    None => {
                        self.closed = true;
                        return Some(None);
                    }
                },
            };
            self.ready.extend(self.conv.chunks(ev));
        }
    }
}

/// The response body's chunks, made as the client takes them: the HTTP connection's task
/// reads the turn's events itself (no task or queue between them, so a token wakes one task
/// on its way out), and deltas that waited while the client was busy merge. The client
/// leaving drops the stream and `rx` with it, which makes the sink cancel the turn.
pub(super) fn chunk_stream(
    id: String,
    created: u64,
    buffered: Vec<Out>,
    rx: Receiver<Out>,
    include_usage: bool,
) -> ChunkStream {
    let feed = Feed {
        conv: Chunker {
            id,
            created,
            summary: Summary::default(),
            include_usage,
        },
        early: buffered.into_iter(),
        held: None,
        rx,
        ready: VecDeque::new(),
        closed: false,
    };
    futures_util::stream::unfold(feed, |mut feed| async move {
        feed.next().await.map(|item| (item, feed))
    })
    .boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::openai::tests::events;

    fn chunker(include_usage: bool) -> Chunker {
        Chunker {
            id: "chatcmpl-1".into(),
            created: 7,
            summary: Summary::default(),
            include_usage,
        }
    }

    #[test]
    fn events_become_role_text_finish_and_usage_chunks() {
        let mut c = chunker(true);
        let chunks: Vec<ChatCompletionChunk> = events()
            .into_iter()
            .flat_map(|ev| c.chunks(Out::Event(ev)))
            .collect();
        assert_eq!(
            chunks[0].choices[0].delta.role.as_deref(),
            Some("assistant")
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c.choices.first()?.delta.content.clone())
            .collect();
        assert_eq!(text, "Paris [1]");
        let finish = chunks
            .iter()
            .find_map(|c| c.choices.first()?.finish_reason.clone());
        assert_eq!(finish.as_deref(), Some("stop"));
        let last = chunks
            .last()
            .map(|c| (c.choices.len(), c.usage.as_ref().map(|u| u.total_tokens)));
        assert_eq!(last, Some((0, Some(15))), "a last chunk with usage only");
        let info = chunks.iter().find_map(|c| c.confab.clone());
        assert_eq!(info.map(|i| i.sources.len()), Some(1));
    }

    #[test]
    fn without_include_usage_the_finish_chunk_is_last() {
        let mut c = chunker(false);
        let chunks: Vec<ChatCompletionChunk> = events()
            .into_iter()
            .flat_map(|ev| c.chunks(Out::Event(ev)))
            .collect();
        let last = chunks
            .last()
            .and_then(|c| c.choices.first()?.finish_reason.clone());
        assert_eq!(last.as_deref(), Some("stop"));
        assert!(chunks.iter().all(|c| c.usage.is_none()));
    }

    fn delta(t: &str) -> Out {
        Out::Event(EventBody::Delta { text: t.into() })
    }

    #[tokio::test]
    async fn deltas_waiting_behind_a_slow_client_merge_in_order_and_nothing_overtakes_them() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        for t in ["b", "c"] {
            tx.send(delta(t)).await.unwrap();
        }
        let end = EventBody::End {
            finish_reason: crate::protocol::FinishReason::Stop,
            partial: false,
        };
        tx.send(Out::Event(end)).await.unwrap();
        tx.send(delta("late")).await.unwrap();
        let mut held = None;
        let merged = merge_waiting(delta("a"), &mut rx, &mut held);
        assert!(matches!(merged, Out::Event(EventBody::Delta { ref text }) if text == "abc"));
        assert!(matches!(held, Some(Out::Event(EventBody::End { .. }))));
        // The delta after the end stays queued, behind it.
        assert!(
            matches!(rx.try_recv(), Ok(Out::Event(EventBody::Delta { ref text })) if text == "late")
        );
    }

    #[tokio::test]
    async fn a_client_that_keeps_up_gets_each_piece_as_it_came() {
        let (_tx, mut rx) = tokio::sync::mpsc::channel::<Out>(16);
        let mut held = None;
        let one = merge_waiting(delta("a"), &mut rx, &mut held);
        assert!(matches!(one, Out::Event(EventBody::Delta { ref text }) if text == "a"));
        assert!(held.is_none());
    }
}
