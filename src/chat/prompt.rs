//! The conversation sent upstream: system prompt, the room's bounded history, the new prompt.

use super::TurnRequest;
use crate::protocol::{FinishReason, TurnSnapshot};
use crate::providers::{ChatMessage, ChatRequest, Role, Source};

/// How to use the sources, for models small and large: short, numbered sources, answer only
/// from them, cite each fact as [n], a bounded answer.
const SOURCES_RULES: &str = "Answer with one or two sentences, using only the numbered sources. \
Put the source number in brackets after each fact. If the sources do not contain the answer, \
say that you do not know.";

/// One worked example (a question, its sources, a cited answer): small models follow an
/// example far better than a rule (measured with Qwen2.5 0.5B: citations went from 2 of 5 to
/// 5 of 6 answers).
fn example() -> [ChatMessage; 2] {
    [
        ChatMessage::text(
            Role::User,
            "Sources:\n[1] Pets: Cats sleep about 15 hours a day.\n[2] Birds: Parrots can \
             live for 60 years.\n\nQuestion from sam: How long can parrots live?",
        ),
        ChatMessage::text(Role::Assistant, "Parrots can live for up to 60 years [2]."),
    ]
}

/// Speakers are named in the user messages because several people share the conversation.
/// A room's history comes from its own turns; a client that sent the conversation (the
/// OpenAI endpoint) has it forwarded as it was, tool calls and results included.
pub fn build_request(
    system: &str,
    history: &[TurnSnapshot],
    turn: &TurnRequest,
    sources: Vec<Source>,
) -> ChatRequest {
    let mut messages = system_messages(system, turn, !sources.is_empty());
    if !sources.is_empty() {
        messages.extend(example());
    }
    match &turn.conversation {
        Some(conversation) => messages.extend(client_conversation(conversation, turn, &sources)),
        None => {
            messages.extend(room_history(history));
            messages.push(question(turn, &sources));
        }
    }
    ChatRequest {
        messages,
        query: turn.prompt.clone(),
        sources,
        sampling: turn.sampling.clone(),
        tools: turn.tools.clone(),
    }
}

/// confab's system prompt (with the source rules when there are sources), then the client's.
fn system_messages(system: &str, turn: &TurnRequest, grounded: bool) -> Vec<ChatMessage> {
    let rules = if grounded { SOURCES_RULES } else { "" };
    // A chain used as a gateway speaks with the client's system prompt, if it sent one.
    let own = if turn.uses_own_system_prompt() {
        system
    } else {
        ""
    };
    let system = [own, rules]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("\n\n");
    let client = turn.client_system.iter().filter(|s| !s.trim().is_empty());
    std::iter::once(&system)
        .chain(client)
        .filter(|c| !c.is_empty())
        .map(|c| ChatMessage::text(Role::System, c.clone()))
        .collect()
}

/// A room's earlier turns, an interrupted answer marked as such.
fn room_history(history: &[TurnSnapshot]) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(history.len() * 2);
    for past in history {
        let asked = format!("{}: {}", past.from.name, past.prompt);
        messages.push(ChatMessage::text(Role::User, asked));
        if !past.answer.is_empty() {
            let mut answer = past.answer.clone();
            if past.partial || past.finish_reason == Some(FinishReason::Error) {
                answer.push_str(" [answer interrupted]");
            }
            messages.push(ChatMessage::text(Role::Assistant, answer));
        }
    }
    messages
}

/// The client's conversation: user messages named, the last one asked with the sources;
/// assistant messages (and their tool calls) and tool results as they came.
fn client_conversation(
    conversation: &[ChatMessage],
    turn: &TurnRequest,
    sources: &[Source],
) -> Vec<ChatMessage> {
    let last_user = conversation.iter().rposition(|m| m.role == Role::User);
    conversation
        .iter()
        .enumerate()
        .map(|(i, m)| match m.role {
            Role::User if Some(i) == last_user => question(turn, sources),
            Role::User => {
                ChatMessage::text(Role::User, format!("{}: {}", turn.from.name, m.content))
            }
            _ => m.clone(),
        })
        .collect()
}

/// The prompt as the model is asked it: named, after the numbered sources when there are.
fn question(turn: &TurnRequest, sources: &[Source]) -> ChatMessage {
    let content = if sources.is_empty() {
        format!("{}: {}", turn.from.name, turn.prompt)
    } else {
        let mut c = String::from("Sources:\n");
        for s in sources {
            c.push_str(&s.listed());
        }
        c.push_str(&format!(
            "\nQuestion from {}: {}",
            turn.from.name, turn.prompt
        ));
        c
    };
    ChatMessage::text(Role::User, content)
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

/// Content words of a text: lowercase, letters and digits, three characters or more.
fn words(text: &str) -> std::collections::HashSet<String> {
    const STOP: &[&str] = &[
        "the", "and", "for", "are", "was", "were", "with", "from", "that", "this", "its", "their",
        "they", "has", "have", "had", "not", "but", "you", "your", "can", "will", "into", "than",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect()
}

/// The sources an uncited answer was taken from: each sharing at least three of the answer's
/// content words and a quarter of them, provided together they cover at least half. Best
/// first is not needed: citations are listed by number.
pub fn attribute(answer: &str, sources: &[Source]) -> Vec<usize> {
    let said = words(answer);
    if said.len() < 3 {
        return Vec::new();
    }
    let mut covered = std::collections::HashSet::new();
    let mut cited: Vec<usize> = Vec::new();
    for s in sources {
        let shared: Vec<String> = words(&s.text).intersection(&said).cloned().collect();
        if shared.len() >= 3 && shared.len() * 4 >= said.len() {
            covered.extend(shared);
            cited.push(s.n);
        }
    }
    if covered.len() * 2 < said.len() {
        return Vec::new();
    }
    cited.sort_unstable();
    cited.dedup();
    cited
}

/// A rough count (4 characters per token) used only when the upstream reports no usage.
pub fn estimate_tokens(req: &ChatRequest) -> u64 {
    let chars: usize = req
        .messages
        .iter()
        .map(|m| {
            let calls: usize = m
                .tool_calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum();
            m.content.chars().count() + calls
        })
        .sum();
    chars.div_ceil(4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(n: usize, text: &str) -> Source {
        Source {
            n,
            doc_id: format!("d{n}"),
            title: format!("T{n}"),
            section: String::new(),
            page: None,
            chunk: 0,
            text: text.into(),
            score: 0.5,
        }
    }

    #[test]
    fn attributes_an_uncited_answer_to_the_source_it_repeats() {
        let sources = [
            src(1, "The first ferry leaves the north pier at 06:40."),
            src(
                2,
                "Checkpoints run every five minutes. Backups go to Oslo every night.",
            ),
        ];
        assert_eq!(
            attribute("Larkspur checkpoints run every five minutes.", &sources),
            [2]
        );
        assert_eq!(
            attribute(
                "The first ferry leaves the north pier at 06:40; checkpoints run every five minutes.",
                &sources
            ),
            [1, 2]
        );
        assert!(attribute("I do not know who won the world cup.", &sources).is_empty());
        assert!(attribute("Yes.", &sources).is_empty());
    }

    #[test]
    fn finds_valid_citations_once() {
        assert_eq!(citations("A [1], b [3][1] and [9] or [x].", 3), vec![1, 3]);
        assert!(citations("none", 3).is_empty());
    }
}
