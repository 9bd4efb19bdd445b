//! Tools a model may call, the calls it makes, and how each kind of provider spells them.
//!
//! OpenAI's shape is the canonical one (`tools[].function`, `tool_choice`,
//! `parallel_tool_calls`, `tool_calls` with JSON-string arguments); Anthropic's Messages API
//! gets the same as `tools[].input_schema`, `tool_choice` (`auto`/`any`/`tool`/`none`,
//! `disable_parallel_tool_use`), `tool_use` blocks and `tool_result` blocks.

use serde_json::{Value, json};

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// The JSON Schema of the arguments object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// At least one call.
    Required,
    /// A call of this function.
    Named(String),
}

/// The tools offered for one request; `Default`: none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tools {
    pub defs: Vec<ToolDef>,
    pub choice: Option<ToolChoice>,
    /// `parallel_tool_calls`: `Some(false)` asks for at most one call per answer.
    pub parallel: Option<bool>,
}

/// One call the model made: its id, the function and the arguments as a JSON string.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A piece of a streamed call: the first piece of call `index` carries its id and name,
/// later ones more of its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

impl Tools {
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// The answer must be a call, which only a model can make.
    pub fn forces_call(&self) -> bool {
        !self.is_empty()
            && matches!(
                self.choice,
                Some(ToolChoice::Required | ToolChoice::Named(_))
            )
    }

    /// `tools`, `tool_choice` and `parallel_tool_calls` of an OpenAI body.
    pub fn openai_fields(&self, body: &mut Value) {
        if self.is_empty() {
            return;
        }
        let defs: Vec<Value> = self
            .defs
            .iter()
            .map(|d| {
                json!({"type": "function", "function": {
                    "name": d.name, "description": d.description, "parameters": d.parameters,
                }})
            })
            .collect();
        body["tools"] = Value::Array(defs);
        if let Some(choice) = &self.choice {
            body["tool_choice"] = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
            };
        }
        if let Some(p) = self.parallel {
            body["parallel_tool_calls"] = json!(p);
        }
    }

    /// `tools` and `tool_choice` of an Anthropic body (`parallel_tool_calls: false` is
    /// `disable_parallel_tool_use`, which lives inside `tool_choice`).
    pub fn anthropic_fields(&self, body: &mut Value) {
        if self.is_empty() {
            return;
        }
        let defs: Vec<Value> = self
            .defs
            .iter()
            .map(|d| json!({"name": d.name, "description": d.description, "input_schema": d.parameters}))
            .collect();
        body["tools"] = Value::Array(defs);
        let mut choice = match &self.choice {
            None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
            Some(ToolChoice::None) => json!({"type": "none"}),
            Some(ToolChoice::Required) => json!({"type": "any"}),
            Some(ToolChoice::Named(n)) => json!({"type": "tool", "name": n}),
        };
        if self.parallel == Some(false) && self.choice != Some(ToolChoice::None) {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        body["tool_choice"] = choice;
    }
}

impl ToolCall {
    /// The call in an OpenAI assistant message.
    pub fn openai(&self) -> Value {
        json!({"id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}})
    }

    /// The call as an Anthropic `tool_use` block; arguments that are not a JSON object (a
    /// model may send broken JSON) go as an empty input rather than failing the request.
    pub fn anthropic(&self) -> Value {
        let input = serde_json::from_str::<Value>(&self.arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        json!({"type": "tool_use", "id": self.id, "name": self.name, "input": input})
    }
}

/// Assembles whole calls from streamed pieces, in the order the model numbered them.
#[derive(Debug, Clone, Default)]
pub struct CallBuilder {
    calls: Vec<ToolCall>,
}

impl CallBuilder {
    /// Adds a piece. The first piece of a call opens it; one that came without an id (some
    /// OpenAI-compatible servers send none) is given one, so the client can answer it.
    pub fn push(&mut self, d: &mut ToolCallDelta) {
        let i = d.index as usize;
        let opens = i >= self.calls.len();
        while self.calls.len() <= i {
            self.calls.push(ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        if opens && d.id.is_none() {
            d.id = Some(format!("call_{}", fastrand_id()));
        }
        let call = &mut self.calls[i];
        if let Some(id) = &d.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &d.name {
            call.name.push_str(name);
        }
        call.arguments.push_str(&d.arguments);
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The calls so far.
    pub fn calls(&self) -> &[ToolCall] {
        &self.calls
    }
}

/// 24 random letters and digits.
fn fastrand_id() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tools(choice: Option<ToolChoice>, parallel: Option<bool>) -> Tools {
        Tools {
            defs: vec![ToolDef {
                name: "get_weather".into(),
                description: "Weather of a city".into(),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            }],
            choice,
            parallel,
        }
    }

    #[test]
    fn openai_and_anthropic_spell_the_same_tools() {
        let t = tools(Some(ToolChoice::Named("get_weather".into())), Some(false));
        let mut o = json!({});
        t.openai_fields(&mut o);
        assert_eq!(o["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(o["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(o["parallel_tool_calls"], false);
        let mut a = json!({});
        t.anthropic_fields(&mut a);
        assert_eq!(a["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(
            a["tool_choice"],
            json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
        );
        let mut a = json!({});
        tools(Some(ToolChoice::Required), None).anthropic_fields(&mut a);
        assert_eq!(a["tool_choice"], json!({"type": "any"}));
        assert!(tools(Some(ToolChoice::Required), None).forces_call());
        assert!(!tools(Some(ToolChoice::Auto), None).forces_call());
        let mut none = json!({});
        Tools::default().openai_fields(&mut none);
        assert_eq!(none, json!({}), "no tools: nothing added");
    }

    #[test]
    fn streamed_pieces_add_up_to_whole_calls() {
        let mut b = CallBuilder::default();
        let piece = |index, id: Option<&str>, name: Option<&str>, args: &str| ToolCallDelta {
            index,
            id: id.map(str::to_string),
            name: name.map(str::to_string),
            arguments: args.into(),
        };
        b.push(&mut piece(0, Some("call_a"), Some("get_weather"), ""));
        let mut second = piece(1, None, Some("get_time"), "{}");
        b.push(&mut second);
        b.push(&mut piece(0, None, None, "{\"city\":"));
        b.push(&mut piece(0, None, None, "\"Oslo\"}"));
        let calls = b.calls();
        assert_eq!(calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(calls[0].id, "call_a");
        let made_up = second.id.clone().unwrap();
        assert!(
            made_up.starts_with("call_") && made_up.len() == 29,
            "{made_up}"
        );
        assert_eq!(
            calls[1].id, made_up,
            "the client sees the id it will answer"
        );
        assert_eq!(calls[0].anthropic()["input"]["city"], "Oslo");
        let broken = ToolCall {
            id: "x".into(),
            name: "n".into(),
            arguments: "{oops".into(),
        };
        assert_eq!(broken.anthropic()["input"], json!({}));
    }
}
