//! How a client asked the model to sample (the OpenAI request's knobs), and what each kind
//! of provider makes of it. OpenAI-compatible upstreams take every setting as it is;
//! Anthropic's Messages API takes temperature (0–1), top_p, max_tokens and stop sequences,
//! and has no seed, penalties or response format. The extractive fallback is not a model: it
//! ignores sampling, and is skipped when a JSON format is asked for (it answers in plain
//! text). A chain is refused a request one of its model links cannot honour, so a setting is
//! never dropped on the way (`unsupported`).

use serde_json::{Value, json};

use crate::config::ProviderKind;

/// The client's sampling settings; `Default`: none (the provider's own defaults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// The client's output cap; the provider's configured `max_tokens` still bounds it.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// OpenAI's `response_format` object (`json_object`, or `json_schema` with its schema).
    pub response_format: Option<Value>,
}

impl Sampling {
    /// A JSON answer was asked for (`json_object` or `json_schema`).
    pub fn wants_json(&self) -> bool {
        self.response_format.is_some()
    }

    /// No setting given: answers may come from (and go to) the answer cache.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The output cap to send: the client's, within the configured one (0: none configured).
    pub fn output_cap(&self, configured: u32) -> Option<u32> {
        match (self.max_tokens, configured) {
            (Some(c), 0) => Some(c),
            (Some(c), n) => Some(c.min(n)),
            (None, 0) => None,
            (None, n) => Some(n),
        }
    }

    /// The first setting a provider of `kind` cannot honour, and why; `None`: all fine.
    pub fn unsupported(&self, kind: ProviderKind) -> Option<(&'static str, &'static str)> {
        match kind {
            ProviderKind::Openai => None,
            ProviderKind::Anthropic => {
                if self.temperature.is_some_and(|t| t > 1.0) {
                    return Some(("temperature", "Anthropic takes a temperature from 0 to 1"));
                }
                let none = "the Anthropic Messages API has no such setting";
                [
                    ("seed", self.seed.is_some()),
                    ("presence_penalty", self.presence_penalty.is_some()),
                    ("frequency_penalty", self.frequency_penalty.is_some()),
                    ("response_format", self.response_format.is_some()),
                ]
                .into_iter()
                .find(|(_, set)| *set)
                .map(|(name, _)| (name, none))
            }
            // Skipped for JSON answers (see `wants_json`); otherwise not a model to tune.
            ProviderKind::Extractive => None,
        }
    }

    /// The settings in an OpenAI chat-completions body (`max_tokens` is set by the caller).
    pub fn openai_fields(&self, body: &mut Value) {
        let set = |body: &mut Value, key: &str, v: Option<Value>| {
            if let Some(v) = v {
                body[key] = v;
            }
        };
        set(body, "temperature", self.temperature.map(|v| json!(v)));
        set(body, "top_p", self.top_p.map(|v| json!(v)));
        set(body, "seed", self.seed.map(|v| json!(v)));
        set(
            body,
            "presence_penalty",
            self.presence_penalty.map(|v| json!(v)),
        );
        set(
            body,
            "frequency_penalty",
            self.frequency_penalty.map(|v| json!(v)),
        );
        set(body, "response_format", self.response_format.clone());
        if !self.stop.is_empty() {
            body["stop"] = json!(self.stop);
        }
    }

    /// The settings in an Anthropic Messages body (the ones it has).
    pub fn anthropic_fields(&self, body: &mut Value) {
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = self.top_p {
            body["top_p"] = json!(p);
        }
        if !self.stop.is_empty() {
            body["stop_sequences"] = json!(self.stop);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_kind_takes_what_it_can_and_names_what_it_cannot() {
        let s = Sampling {
            temperature: Some(0.2),
            top_p: Some(0.9),
            max_tokens: Some(50),
            stop: vec!["END".into()],
            seed: Some(7),
            ..Sampling::default()
        };
        assert_eq!(s.unsupported(ProviderKind::Openai), None);
        assert_eq!(s.unsupported(ProviderKind::Anthropic).unwrap().0, "seed");
        assert_eq!(s.unsupported(ProviderKind::Extractive), None);
        let hot = Sampling {
            temperature: Some(1.5),
            ..Sampling::default()
        };
        assert_eq!(
            hot.unsupported(ProviderKind::Anthropic).unwrap().0,
            "temperature"
        );
        let json = Sampling {
            response_format: Some(json!({"type": "json_object"})),
            ..Sampling::default()
        };
        assert!(json.wants_json());
        assert_eq!(json.unsupported(ProviderKind::Extractive), None);
        assert_eq!(
            json.unsupported(ProviderKind::Anthropic).unwrap().0,
            "response_format"
        );

        let mut body = json!({});
        s.openai_fields(&mut body);
        assert_eq!(
            body,
            json!({"temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END"]})
        );
        let mut body = json!({});
        s.anthropic_fields(&mut body);
        assert_eq!(
            body,
            json!({"temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"]})
        );
    }

    #[test]
    fn the_configured_cap_bounds_the_clients() {
        let s = |m| Sampling {
            max_tokens: m,
            ..Sampling::default()
        };
        assert_eq!(s(Some(50)).output_cap(512), Some(50));
        assert_eq!(s(Some(900)).output_cap(512), Some(512));
        assert_eq!(s(Some(900)).output_cap(0), Some(900));
        assert_eq!(s(None).output_cap(512), Some(512));
        assert_eq!(s(None).output_cap(0), None);
        assert!(s(None).is_default());
    }
}
