//! Model configuration: named providers, fallback chains, cheap-first routing rules.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

/// Name of the built-in no-LLM provider; always the last link of every chain.
pub const EXTRACTIVE: &str = "extractive";

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions (OpenAI, vLLM, llama.cpp server, Ollama).
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// No LLM: an answer composed from the retrieved passages.
    Extractive,
}

/// One upstream model with its timeouts, retry policy, breaker and prices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderEntry {
    pub kind: ProviderKind,
    /// Base URL with the version prefix (`…/v1`); defaults per kind.
    pub base_url: String,
    pub api_key: Secret,
    /// Read the key from this file at boot (a mounted secret); wins over `api_key`.
    pub api_key_file: Option<PathBuf>,
    pub model: String,
    /// Cap on generated tokens; 0 leaves it to the upstream (Anthropic requires one: 1024).
    pub max_tokens: u32,
    /// USD per million input tokens.
    pub price_input_per_mtok: f64,
    /// USD per million output tokens.
    pub price_output_per_mtok: f64,
    pub connect_timeout_ms: u64,
    /// From sending the request to the first token; on expiry the chain moves on.
    pub first_token_timeout_ms: u64,
    /// Longest silence between two tokens.
    pub idle_timeout_ms: u64,
    /// Hard limit for one attempt.
    pub total_timeout_ms: u64,
    /// Retries of this link before its first token (5xx, 429, connection errors).
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Circuit breaker: the rolling window the error ratio is measured over.
    pub breaker_window_ms: u64,
    /// At least this many attempts in the window before the breaker may open.
    pub breaker_min_requests: u32,
    /// Error ratio (0..1] that opens the breaker.
    pub breaker_error_ratio: f64,
    /// How long an open breaker skips this link before a half-open probe.
    pub breaker_cooldown_ms: u64,
}

impl ProviderEntry {
    /// USD for `tokens_in` prompt and `tokens_out` completion tokens at this provider's prices.
    pub fn cost_usd(&self, tokens_in: u64, tokens_out: u64) -> f64 {
        (tokens_in as f64 * self.price_input_per_mtok
            + tokens_out as f64 * self.price_output_per_mtok)
            / 1e6
    }
}

impl Default for ProviderEntry {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Openai,
            base_url: String::new(),
            api_key: Secret::default(),
            api_key_file: None,
            model: String::new(),
            max_tokens: 512,
            price_input_per_mtok: 0.0,
            price_output_per_mtok: 0.0,
            connect_timeout_ms: 2_000,
            first_token_timeout_ms: 20_000,
            idle_timeout_ms: 15_000,
            total_timeout_ms: 120_000,
            max_retries: 2,
            backoff_base_ms: 200,
            backoff_max_ms: 5_000,
            breaker_window_ms: 60_000,
            breaker_min_requests: 5,
            breaker_error_ratio: 0.5,
            breaker_cooldown_ms: 30_000,
        }
    }
}

/// An ordered list of provider names tried in turn; `extractive` is appended when missing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    pub links: Vec<String>,
    /// Hold the first characters of a non-final link's answer and escalate when they read as
    /// a refusal; clients never see the refused text. Costs that link some TTFT.
    pub escalate_on_refusal: bool,
    /// How many characters to hold for the refusal check.
    pub refusal_probe_chars: usize,
    /// Case-insensitive prefixes that count as a refusal.
    pub refusal_patterns: Vec<String>,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            links: vec![EXTRACTIVE.into()],
            escalate_on_refusal: false,
            refusal_probe_chars: 48,
            refusal_patterns: vec![
                "i'm sorry".into(),
                "i am sorry".into(),
                "i can't".into(),
                "i cannot".into(),
                "as an ai".into(),
            ],
        }
    }
}

/// The client's hint on the speed/quality trade-off of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Fast,
    Balanced,
    Best,
}

/// A cheap-first routing rule: when every condition that is set holds, the turn starts at
/// link `start` of its chain. The first matching rule wins; no match starts at the first link.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteRule {
    pub chain: Option<String>,
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    pub min_sources: Option<usize>,
    pub max_sources: Option<usize>,
    pub quality: Option<Quality>,
    pub start: String,
}

/// Turn-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// The chain rooms use.
    pub chain: String,
    /// Deadline for the whole turn, across every attempt and backoff.
    pub deadline_ms: u64,
    /// System prompt placed before the room's history.
    pub system_prompt: String,
    /// When a model answers from the sources but cites none (small models often forget),
    /// cite the source the answer overlaps most, if it shares at least half its words.
    pub attribute_citations: bool,
    /// Server-side tool calls one turn may make (calls refused for a budget count too);
    /// after the last, the model is asked to answer without tools.
    pub max_tool_calls: u32,
    /// The most one turn may cost, models and tools together; 0: no ceiling. A tool call
    /// that would pass it is refused, and a turn past it after a tool round ends.
    pub max_cost_usd: f64,
    /// A tool's output is cut to this many characters before it reaches the model and
    /// the room.
    pub tool_output_chars: usize,
    /// With retrieval on, offer `search_documents` as a tool the model may call for
    /// follow-up searches (besides the search before the answer).
    pub search_tool: bool,
}

impl TurnConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.max_cost_usd >= 0.0 && self.max_cost_usd.is_finite()) {
            return Err(invalid(
                "turn.max_cost_usd",
                "must be a finite amount of 0 or more",
            ));
        }
        if self.tool_output_chars == 0 {
            return Err(invalid("turn.tool_output_chars", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            chain: "default".into(),
            deadline_ms: 180_000,
            system_prompt: "You are a helpful assistant in a shared chat room. Several people may \
                            speak; their names prefix their messages. Answer concisely."
                .into(),
            attribute_citations: true,
            max_tool_calls: 8,
            max_cost_usd: 0.0,
            tool_output_chars: 8_000,
            search_tool: true,
        }
    }
}

/// Default chains: `default = [extractive]`, so a server with no model still answers.
pub fn default_chains() -> BTreeMap<String, ChainConfig> {
    BTreeMap::from([("default".to_string(), ChainConfig::default())])
}

/// Fills per-kind defaults, reads key files, appends `extractive` to chains, checks references.
pub fn finalize(
    providers: &mut BTreeMap<String, ProviderEntry>,
    chains: &mut BTreeMap<String, ChainConfig>,
    rules: &[RouteRule],
    turn: &TurnConfig,
) -> Result<(), ConfigError> {
    if providers.contains_key(EXTRACTIVE) {
        return Err(invalid(
            format!("providers.{EXTRACTIVE}"),
            "is built in and cannot be redefined",
        ));
    }
    for (name, p) in providers.iter_mut() {
        finalize_provider(name, p)?;
    }
    for (name, chain) in chains.iter_mut() {
        finalize_chain(name, chain, providers)?;
    }
    if !chains.contains_key(&turn.chain) {
        return Err(invalid(
            "turn.chain",
            format!("chain {:?} is not defined under [chains]", turn.chain),
        ));
    }
    if turn.deadline_ms == 0 {
        return Err(invalid("turn.deadline_ms", "must be greater than 0"));
    }
    check_rules(rules, chains, turn)
}

/// Fills a provider's per-kind defaults, reads its key file and checks its values.
fn finalize_provider(name: &str, p: &mut ProviderEntry) -> Result<(), ConfigError> {
    let f = |k: &str| format!("providers.{name}.{k}");
    if p.base_url.is_empty() {
        p.base_url = match p.kind {
            ProviderKind::Openai => "https://api.openai.com/v1".into(),
            ProviderKind::Anthropic => "https://api.anthropic.com/v1".into(),
            ProviderKind::Extractive => String::new(),
        };
    }
    if p.kind == ProviderKind::Extractive {
        return Err(invalid(
            f("kind"),
            "extractive is built in; name it `extractive` in a chain instead",
        ));
    }
    if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
        return Err(invalid(
            f("base_url"),
            format!("must start with http:// or https://, got {:?}", p.base_url),
        ));
    }
    if p.model.trim().is_empty() {
        return Err(invalid(f("model"), "must not be empty"));
    }
    if p.kind == ProviderKind::Anthropic && p.max_tokens == 0 {
        p.max_tokens = 1024;
    }
    if let Some(path) = &p.api_key_file {
        let key = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                f("api_key_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        p.api_key = Secret::new(key.trim());
    }
    check_provider_values(&f, p)
}

fn check_provider_values(f: &dyn Fn(&str) -> String, p: &ProviderEntry) -> Result<(), ConfigError> {
    for (k, v) in [
        ("connect_timeout_ms", p.connect_timeout_ms),
        ("first_token_timeout_ms", p.first_token_timeout_ms),
        ("idle_timeout_ms", p.idle_timeout_ms),
        ("total_timeout_ms", p.total_timeout_ms),
        ("breaker_window_ms", p.breaker_window_ms),
    ] {
        if v == 0 {
            return Err(invalid(f(k), "must be greater than 0"));
        }
    }
    if !(p.breaker_error_ratio > 0.0 && p.breaker_error_ratio <= 1.0) {
        return Err(invalid(f("breaker_error_ratio"), "must be in (0, 1]"));
    }
    if p.price_input_per_mtok < 0.0 || p.price_output_per_mtok < 0.0 {
        return Err(invalid(
            f("price_input_per_mtok"),
            "prices must not be negative",
        ));
    }
    Ok(())
}

/// Checks a chain's links, appends `extractive` last and lower-cases refusal patterns.
fn finalize_chain(
    name: &str,
    chain: &mut ChainConfig,
    providers: &BTreeMap<String, ProviderEntry>,
) -> Result<(), ConfigError> {
    for link in &chain.links {
        if link != EXTRACTIVE && !providers.contains_key(link) {
            return Err(invalid(
                format!("chains.{name}.links"),
                format!("names provider {link:?}, which is not defined under [providers]"),
            ));
        }
    }
    if chain.links.last().map(String::as_str) != Some(EXTRACTIVE) {
        chain.links.retain(|l| l != EXTRACTIVE);
        chain.links.push(EXTRACTIVE.into());
    }
    chain.refusal_patterns = chain
        .refusal_patterns
        .iter()
        .map(|p| p.to_lowercase())
        .collect();
    Ok(())
}

/// Every routing rule names a chain and one of its links.
fn check_rules(
    rules: &[RouteRule],
    chains: &BTreeMap<String, ChainConfig>,
    turn: &TurnConfig,
) -> Result<(), ConfigError> {
    for (i, rule) in rules.iter().enumerate() {
        let chain_name = rule.chain.as_deref().unwrap_or(&turn.chain);
        let Some(chain) = chains.get(chain_name) else {
            return Err(invalid(
                format!("routing.rules[{i}].chain"),
                format!("chain {chain_name:?} is not defined"),
            ));
        };
        if !chain.links.contains(&rule.start) {
            return Err(invalid(
                format!("routing.rules[{i}].start"),
                format!("{:?} is not a link of chain {chain_name:?}", rule.start),
            ));
        }
    }
    Ok(())
}
