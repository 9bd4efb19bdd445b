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
    let question = format!("{}: {}", turn.from.name, turn.prompt);
    let content = if sources.is_empty() {
        question
    } else {
        let mut c = String::from("Sources:\n");
        for s in &sources {
            let place = if s.section.is_empty() || s.section == s.title {
                s.title.clone()
            } else {
                format!("{} › {}", s.title, s.section)
            };
            c.push_str(&format!("[{}] {place} — {}\n", s.n, s.text));
        }
        c.push_str(
            "\nAnswer from the sources above when they are relevant and cite each one you use \
             as [n]. If they do not contain the answer, say so.\n\n",
        );
        c.push_str(&question);
        c
    };
    messages.push(ChatMessage {
        role: Role::User,
        content,
    });
    ChatRequest {
        messages,
        query: turn.prompt.clone(),
        sources,
    }
}

/// The text to embed for retrieval: short follow-ups get the previous prompt in front.
pub fn retrieval_query(history: &[TurnSnapshot], prompt: &str, short_words: usize) -> String {
    match history.last() {
        Some(prev) if prompt.split_whitespace().count() < short_words => {
            format!("{}\n{}", prev.prompt, prompt)
        }
        _ => prompt.to_string(),
    }
}

/// The distinct `[n]` citations in `answer` that name one of `count` sources.
pub fn citations(answer: &str, count: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        if let Ok(n) = rest[..close].trim().parse::<usize>()
            && (1..=count).contains(&n)
            && !out.contains(&n)
        {
            out.push(n);
        }
        rest = &rest[close..];
    }
    out
}

/// A rough count (4 characters per token) used only when the upstream reports no usage.
pub fn estimate_tokens(req: &ChatRequest) -> u64 {
    let chars: usize = req.messages.iter().map(|m| m.content.chars().count()).sum();
    chars.div_ceil(4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_valid_citations_once() {
        assert_eq!(citations("A [1], b [3][1] and [9] or [x].", 3), vec![1, 3]);
        assert!(citations("none", 3).is_empty());
    }
}
