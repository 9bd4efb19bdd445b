//! The conversation of an OpenAI request: its messages as the model will get them (tool
//! calls and results included, checked to pair up as OpenAI requires), the last user
//! message as the prompt, and the earlier messages as the turn engine's history (the cache
//! scope and short follow-up searches read it).

use std::collections::HashSet;

use uuid::Uuid;

use super::types::{ChatMessageIn, MessageContent};
use crate::protocol::{FinishReason, Member, TurnSnapshot};
use crate::providers::{ChatMessage, Role, ToolCall};

/// What the messages of a request add up to.
pub(super) struct Conversation {
    /// Every message but the system ones, as sent upstream.
    pub messages: Vec<ChatMessage>,
    /// The last user message.
    pub prompt: String,
    /// The messages before it, as turns.
    pub history: Vec<TurnSnapshot>,
}

/// The client's system (and developer) messages, in order.
pub(super) fn system_messages(messages: &[ChatMessageIn]) -> Result<Vec<String>, String> {
    messages.iter().filter(|m| is_system(m)).map(text).collect()
}

fn is_system(m: &ChatMessageIn) -> bool {
    m.role == "system" || m.role == "developer"
}

/// A message's text: the string, or its text parts joined.
fn text(m: &ChatMessageIn) -> Result<String, String> {
    match &m.content {
        None => Ok(String::new()),
        Some(MessageContent::Text(t)) => Ok(t.0.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                if *p.kind != *"text" {
                    return Err(format!(
                        "content parts of type {:?} are not supported (text only)",
                        p.kind.0
                    ));
                }
                out.push_str(p.text.as_deref().unwrap_or(""));
            }
            Ok(out)
        }
    }
}

/// One message as sent upstream.
fn message(m: &ChatMessageIn) -> Result<ChatMessage, String> {
    let role = match m.role.0.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => return Err(format!("unknown role {other:?}")),
    };
    let tool_calls: Vec<ToolCall> = m
        .tool_calls
        .iter()
        .flatten()
        .map(|c| ToolCall {
            id: c.id.0.clone(),
            name: c.function.name.0.clone(),
            arguments: c.function.arguments.0.clone(),
        })
        .collect();
    if role != Role::Assistant && !tool_calls.is_empty() {
        return Err("only assistant messages may have tool_calls".into());
    }
    let tool_call_id = m.tool_call_id.as_ref().map(|i| i.0.clone());
    if role == Role::Tool && tool_call_id.is_none() {
        return Err("a tool message needs the tool_call_id it answers".into());
    }
    Ok(ChatMessage {
        role,
        content: text(m)?,
        tool_calls,
        tool_call_id: tool_call_id.filter(|_| role == Role::Tool),
    })
}

/// Every call of an assistant message must be answered by the tool messages right after it,
/// and a tool message must answer one of those calls (as OpenAI and Anthropic both require).
fn check_pairs(messages: &[ChatMessage]) -> Result<(), String> {
    let mut open: HashSet<&str> = HashSet::new();
    let unanswered = |open: &HashSet<&str>| {
        let mut missing: Vec<&str> = open.iter().copied().collect();
        missing.sort_unstable();
        format!("tool calls {missing:?} have no tool message answering them")
    };
    for m in messages {
        match m.role {
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                if !open.remove(id) {
                    return Err(format!(
                        "tool message {id:?} answers no call of the assistant message before it"
                    ));
                }
            }
            _ if !open.is_empty() => return Err(unanswered(&open)),
            Role::Assistant => open = m.tool_calls.iter().map(|c| c.id.as_str()).collect(),
            _ => {}
        }
    }
    if !open.is_empty() {
        return Err(unanswered(&open));
    }
    Ok(())
}

/// The request's conversation, checked: it has a non-empty user message, and ends with one
/// or with the results of the calls made after it.
pub(super) fn conversation(
    all: &[ChatMessageIn],
    speaker: &Member,
) -> Result<Conversation, String> {
    let messages: Vec<ChatMessage> = all
        .iter()
        .filter(|m| !is_system(m))
        .map(message)
        .collect::<Result<_, _>>()?;
    let Some(last_user) = messages.iter().rposition(|m| m.role == Role::User) else {
        return Err("messages must contain a user message".into());
    };
    match messages.last() {
        Some(m) if m.role == Role::Assistant => {
            return Err("the last message must have role user or tool, not \"assistant\"".into());
        }
        _ => {}
    }
    check_pairs(&messages)?;
    let prompt = messages[last_user].content.clone();
    if prompt.trim().is_empty() {
        return Err("the last user message is empty".into());
    }
    let history = turns(&messages[..last_user], speaker);
    Ok(Conversation {
        messages,
        prompt,
        history,
    })
}

/// Messages as turns: a user message opens one, what answers it becomes its answer.
fn turns(messages: &[ChatMessage], speaker: &Member) -> Vec<TurnSnapshot> {
    let turn = |prompt: String, answer: String| TurnSnapshot {
        turn_id: Uuid::new_v4(),
        from: speaker.clone(),
        prompt,
        answer,
        finish_reason: Some(FinishReason::Stop),
        partial: false,
    };
    let mut out: Vec<TurnSnapshot> = Vec::new();
    for m in messages {
        match m.role {
            Role::User => out.push(turn(m.content.clone(), String::new())),
            _ => match out.last_mut() {
                Some(t) if t.answer.is_empty() => t.answer = m.content.clone(),
                _ => out.push(turn(String::new(), m.content.clone())),
            },
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::api::openai::types::{FunctionCallIn, ToolCallIn};
    use crate::api::strict::Str;

    fn msg(role: &str, content: &str) -> ChatMessageIn {
        ChatMessageIn {
            role: Str(role.into()),
            content: Some(MessageContent::Text(Str(content.into()))),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }

    fn calls(ids: &[&str]) -> ChatMessageIn {
        let mut m = msg("assistant", "");
        m.content = None;
        m.tool_calls = Some(
            ids.iter()
                .map(|id| ToolCallIn {
                    id: Str((*id).into()),
                    kind: Str("function".into()),
                    function: FunctionCallIn {
                        name: Str("get_weather".into()),
                        arguments: Str("{}".into()),
                    },
                })
                .collect(),
        );
        m
    }

    fn result(id: &str) -> ChatMessageIn {
        let mut m = msg("tool", "sunny");
        m.tool_call_id = Some(Str(id.into()));
        m
    }

    fn history(
        messages: &[ChatMessageIn],
        s: &Member,
    ) -> Result<(Vec<TurnSnapshot>, String), String> {
        conversation(messages, s).map(|c| (c.history, c.prompt))
    }

    fn speaker() -> Member {
        Member {
            session_id: Uuid::new_v4(),
            name: "ann".into(),
        }
    }

    #[test]
    fn earlier_messages_become_turns_and_the_last_is_the_prompt() {
        let messages = [
            msg("system", "be brief"),
            msg("user", "one?"),
            msg("assistant", "1"),
            msg("user", "two?"),
            msg("assistant", "2"),
            msg("assistant", "and more"),
            msg("user", "three?"),
        ];
        let (turns, prompt) = history(&messages, &speaker()).unwrap();
        assert_eq!(prompt, "three?");
        let pairs: Vec<_> = turns
            .iter()
            .map(|t| (t.prompt.as_str(), t.answer.as_str()))
            .collect();
        assert_eq!(pairs, [("one?", "1"), ("two?", "2"), ("", "and more")]);
        assert!(turns.iter().all(|t| t.from.name == "ann"));
    }

    #[test]
    fn the_last_message_must_be_a_non_empty_user_message() {
        let s = speaker();
        assert!(history(&[msg("system", "x")], &s).is_err());
        assert!(history(&[msg("user", "q"), msg("assistant", "a")], &s).is_err());
        assert!(history(&[msg("user", "  ")], &s).is_err());
        let e = history(&[msg("robot", "x"), msg("user", "q")], &s).unwrap_err();
        assert!(e.contains("robot"), "{e}");
    }

    #[test]
    fn tool_calls_and_their_results_must_pair_up() {
        let s = speaker();
        let ok = [
            msg("user", "weather?"),
            calls(&["a", "b"]),
            result("b"),
            result("a"),
        ];
        let c = conversation(&ok, &s).unwrap();
        assert_eq!(c.prompt, "weather?");
        assert_eq!(c.messages.len(), 4);
        assert_eq!(c.messages[1].tool_calls.len(), 2);
        assert_eq!(c.messages[3].tool_call_id.as_deref(), Some("a"));
        let unanswered = [msg("user", "w?"), calls(&["a", "b"]), result("a")];
        let e = conversation(&unanswered, &s).err().unwrap();
        assert!(e.contains("no tool message"), "{e}");
        let stray = [msg("user", "w?"), result("zz")];
        let e = conversation(&stray, &s).err().unwrap();
        assert!(e.contains("zz"), "{e}");
        let interrupted = [msg("user", "w?"), calls(&["a"]), msg("user", "and?")];
        assert!(conversation(&interrupted, &s).is_err());
        let mut no_id = result("a");
        no_id.tool_call_id = None;
        assert!(conversation(&[msg("user", "w?"), calls(&["a"]), no_id], &s).is_err());
    }
}
