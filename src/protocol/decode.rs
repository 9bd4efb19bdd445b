//! Decoding of client frames with errors precise enough for a client developer to act on.

use super::ClientMessage;
use crate::error::ErrorCode;

const KNOWN_TYPES: &[&str] = &["join", "prompt", "cancel", "typing", "ping", "leave"];

/// A client frame that could not be turned into a [`ClientMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
}

/// Parses one text frame: malformed JSON, an unknown `type` and bad fields each get their own
/// error code so the client can tell them apart.
pub fn decode_client_message(text: &str) -> Result<ClientMessage, DecodeError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DecodeError {
        code: ErrorCode::BadJson,
        message: format!("frame is not valid JSON: {e}"),
    })?;
    let Some(obj) = value.as_object() else {
        return Err(DecodeError {
            code: ErrorCode::InvalidMessage,
            message: "frame must be a JSON object with a \"type\" field".into(),
        });
    };
    let ty = match obj.get("type") {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(DecodeError {
                code: ErrorCode::UnknownType,
                message: "\"type\" must be a string".into(),
            });
        }
        None => {
            return Err(DecodeError {
                code: ErrorCode::UnknownType,
                message: "missing \"type\" field".into(),
            });
        }
    };
    if !KNOWN_TYPES.contains(&ty.as_str()) {
        let shown: String = ty.chars().take(64).collect();
        return Err(DecodeError {
            code: ErrorCode::UnknownType,
            message: format!(
                "unknown message type {shown:?}; expected one of {}",
                KNOWN_TYPES.join(", ")
            ),
        });
    }
    serde_json::from_value(value).map_err(|e| DecodeError {
        code: ErrorCode::InvalidMessage,
        message: format!("invalid {ty:?} message: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Option<ErrorCode> {
        decode_client_message(text).err().map(|e| e.code)
    }

    #[test]
    fn classifies_bad_input() {
        assert_eq!(code("{not json"), Some(ErrorCode::BadJson));
        assert_eq!(code("[1,2]"), Some(ErrorCode::InvalidMessage));
        assert_eq!(code(r#"{"type":"dance"}"#), Some(ErrorCode::UnknownType));
        assert_eq!(code(r#"{"room":"a"}"#), Some(ErrorCode::UnknownType));
        assert_eq!(
            code(r#"{"type":"join","name":"x"}"#),
            Some(ErrorCode::InvalidMessage)
        );
        assert_eq!(
            code(r#"{"type":"ping","extra":1}"#),
            Some(ErrorCode::InvalidMessage)
        );
    }

    #[test]
    fn missing_field_is_named() {
        let err = decode_client_message(r#"{"type":"join","name":"x"}"#)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(err.contains("room"), "{err}");
    }

    #[test]
    fn decodes_every_type() {
        for text in [
            r#"{"type":"join","room":"r","name":"n","last_seq":3}"#,
            r#"{"type":"prompt","text":"hi","client_msg_id":"m1"}"#,
            r#"{"type":"cancel","turn_id":"67e55044-10b1-426f-9247-bb680e5fe0c8"}"#,
            r#"{"type":"typing"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"leave"}"#,
        ] {
            assert!(decode_client_message(text).is_ok(), "{text}");
        }
    }
}
