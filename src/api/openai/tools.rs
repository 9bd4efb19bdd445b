//! The request's tools, checked: function tools with distinct names and object schemas, and
//! a `tool_choice` that names one of them (a required call without tools is refused).

use std::collections::HashSet;

use super::types::{ChatCompletionRequest, ToolChoiceIn};
use crate::providers::{ToolChoice, ToolDef, Tools};

/// The tools of `req`, or why they are refused: (message, the parameter).
pub(super) fn tools(req: &ChatCompletionRequest) -> Result<Tools, (String, &'static str)> {
    let defs: Vec<ToolDef> = req
        .tools
        .iter()
        .flatten()
        .map(|t| ToolDef {
            name: t.function.name.clone(),
            description: t
                .function
                .description
                .as_ref()
                .map(|d| d.0.clone())
                .unwrap_or_default(),
            parameters: t
                .function
                .parameters
                .as_ref()
                .map(|p| p.0.clone())
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        })
        .collect();
    let mut seen = HashSet::new();
    if let Some(d) = defs.iter().find(|d| !seen.insert(d.name.as_str())) {
        return Err((format!("two tools are named {:?}", d.name), "tools"));
    }
    if let Some(d) = defs.iter().find(|d| !d.parameters.is_object()) {
        let why = format!(
            "the parameters of tool {:?} must be a JSON Schema object",
            d.name
        );
        return Err((why, "tools"));
    }
    let choice = match &req.tool_choice {
        None => None,
        Some(ToolChoiceIn::Mode(m)) => Some(match m.0.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                let why = format!("tool_choice {other:?} is not one of none, auto, required");
                return Err((why, "tool_choice"));
            }
        }),
        Some(ToolChoiceIn::Function(f)) => {
            let name = f.function.name.0.clone();
            if !defs.iter().any(|d| d.name == name) {
                let why = format!("tool_choice names {name:?}, which is not one of the tools");
                return Err((why, "tool_choice"));
            }
            Some(ToolChoice::Named(name))
        }
    };
    // Without tools, `auto`, `none` and `parallel_tool_calls` change nothing; a call that
    // must be made cannot be.
    if defs.is_empty() && matches!(choice, Some(ToolChoice::Required | ToolChoice::Named(_))) {
        let why = "tool_choice requires a call, but no tools are given";
        return Err((why.into(), "tool_choice"));
    }
    Ok(Tools {
        defs,
        choice,
        parallel: req.parallel_tool_calls,
    })
}
