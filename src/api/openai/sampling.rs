//! The request's sampling settings, taken as the client gave them and checked against the
//! chain that will run them: a setting one of its links cannot honour is a 400 that names
//! the setting and the link (an answer never silently ignores what was asked).

use super::types::{ChatCompletionRequest, StopSequences};
use crate::providers::Sampling;

/// At most this many stop sequences (OpenAI's limit), each at most this long.
const MAX_STOPS: usize = 4;
const MAX_STOP_CHARS: usize = 256;

/// The settings of `req`, or why they are refused: (message, the parameter).
pub(super) fn sampling(req: &ChatCompletionRequest) -> Result<Sampling, (String, &'static str)> {
    let stop = match &req.stop {
        None => Vec::new(),
        Some(StopSequences::One(s)) => vec![s.clone()],
        Some(StopSequences::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS {
        return Err((format!("stop takes at most {MAX_STOPS} sequences"), "stop"));
    }
    if stop
        .iter()
        .any(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS)
    {
        let why = format!("each stop sequence must have 1 to {MAX_STOP_CHARS} characters");
        return Err((why, "stop"));
    }
    let response_format = match &req.response_format {
        None => None,
        Some(f) if f.kind == "text" => None,
        Some(f) if f.kind == "json_schema" && f.json_schema.is_none() => {
            let why = "response_format json_schema needs its json_schema object".to_string();
            return Err((why, "response_format"));
        }
        Some(f) => {
            let mut v = serde_json::json!({"type": f.kind});
            if let Some(schema) = &f.json_schema {
                v["json_schema"] = schema.0.clone();
            }
            Some(v)
        }
    };
    let max_tokens = match (req.max_tokens, req.max_completion_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens,
        stop,
        seed: req.seed,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        response_format,
    })
}
