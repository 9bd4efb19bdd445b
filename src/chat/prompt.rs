//! The conversation sent upstream: system prompt, the room's bounded history, the new prompt.

use crate::protocol::{FinishReason, TurnSnapshot};
use crate::providers::{ChatMessage, ChatRequest, Role, Source};
use crate::rooms::QueuedTurn;

/// Speakers are named in the user messages because several people share the conversation.
pub fn build_request(
    system: &str,
    history: &[TurnSnapshot],
    turn: &QueuedTurn,
    sources: Vec<Source>,
) -> ChatRequest {
    let mut messages = Vec::with_capacity(history.len() * 2 + 2);
    if !system.is_empty() {
        messages.push(ChatMessage {
            role: Role::System,
            content: system.to_string(),
        });
    }
    for past in history {
        messages.push(ChatMessage {
            role: Role::User,
            content: format!("{}: {}", past.from.name, past.prompt),
        });
        if !past.answer.is_empty() {
            let mut answer = past.answer.clone();
            if past.partial || past.finish_reason == Some(FinishReason::Error) {
                answer.push_str(" [answer interrupted]");
            }
            messages.push(ChatMessage {
                role: Role::Assistant,
                content: answer,
            });
        }
    }
    messages.push(ChatMessage {
        role: Role::User,
        content: format!("{}: {}", turn.from.name, turn.prompt),
    });
    ChatRequest {
        messages,
        query: turn.prompt.clone(),
        sources,
    }
}

/// A rough count (4 characters per token) used only when the upstream reports no usage.
pub fn estimate_tokens(req: &ChatRequest) -> u64 {
    let chars: usize = req.messages.iter().map(|m| m.content.chars().count()).sum();
    chars.div_ceil(4) as u64
}
