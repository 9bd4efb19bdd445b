//! The conversation of an OpenAI request as the turn engine's history: earlier user and
//! assistant messages become turns, the last user message is the prompt.

use uuid::Uuid;

use super::types::ChatMessageIn;
use crate::protocol::{FinishReason, Member, TurnSnapshot};

/// The client's system (and developer) messages, in order.
pub(super) fn system_messages(messages: &[ChatMessageIn]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.role == "system" || m.role == "developer")
        .map(|m| m.content.0.clone())
        .collect()
}

/// The conversation before the last user message, as the turn engine's history.
pub(super) fn history(
    messages: &[ChatMessageIn],
    speaker: &Member,
) -> Result<(Vec<TurnSnapshot>, String), String> {
    let turns: Vec<&ChatMessageIn> = messages
        .iter()
        .filter(|m| m.role != "system" && m.role != "developer")
        .collect();
    let Some((last, earlier)) = turns.split_last() else {
        return Err("messages must contain a user message".into());
    };
    if last.role != "user" {
        return Err(format!(
            "the last message must have role user, not {:?}",
            last.role
        ));
    }
    if last.content.trim().is_empty() {
        return Err("the last user message is empty".into());
    }
    let turn = |prompt: String, answer: String| TurnSnapshot {
        turn_id: Uuid::new_v4(),
        from: speaker.clone(),
        prompt,
        answer,
        finish_reason: Some(FinishReason::Stop),
        partial: false,
    };
    let mut out: Vec<TurnSnapshot> = Vec::new();
    for m in earlier {
        match m.role.0.as_str() {
            "user" => out.push(turn(m.content.0.clone(), String::new())),
            "assistant" | "tool" => match out.last_mut() {
                Some(t) if t.answer.is_empty() => t.answer = m.content.0.clone(),
                _ => out.push(turn(String::new(), m.content.0.clone())),
            },
            other => return Err(format!("unknown role {other:?}")),
        }
    }
    Ok((out, last.content.0.clone()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessageIn {
        ChatMessageIn {
            role: crate::api::strict::Str(role.into()),
            content: crate::api::strict::Str(content.into()),
        }
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
}
