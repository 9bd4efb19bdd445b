//! Fallback chains built from config: links (provider + policy + breaker) and routing rules.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, EXTRACTIVE, ProviderEntry, Quality, RouteRule};
use crate::providers::{CircuitBreaker, Provider, ProviderError};

/// One provider with the policy it is called under.
pub struct Link {
    pub name: String,
    pub provider: Provider,
    pub entry: ProviderEntry,
    pub breaker: CircuitBreaker,
}

impl Link {
    pub fn is_extractive(&self) -> bool {
        matches!(self.provider, Provider::Extractive)
    }
}

/// An ordered list of links; the last is always `extractive`.
pub struct Chain {
    pub name: String,
    pub links: Vec<Arc<Link>>,
    pub escalate_on_refusal: bool,
    pub refusal_probe_chars: usize,
    pub refusal_patterns: Vec<String>,
}

impl Chain {
    /// Whether a stronger LLM link follows `index` (so escalating from it makes sense).
    pub fn has_stronger_after(&self, index: usize) -> bool {
        self.links[index + 1..].iter().any(|l| !l.is_extractive())
    }
}

/// What routing rules look at.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput {
    pub prompt_tokens: u64,
    pub sources: usize,
    pub quality: Option<Quality>,
}

/// All chains and the routing rules, built once at boot.
pub struct Models {
    chains: HashMap<String, Chain>,
    rules: Vec<RouteRule>,
    /// Every upstream link by name (the extractive one included).
    links: HashMap<String, Arc<Link>>,
}

impl Models {
    /// Builds every provider client and breaker from a finalized config.
    pub fn from_config(cfg: &Config) -> Result<Self, ProviderError> {
        let mut links: HashMap<String, Arc<Link>> = HashMap::new();
        for (name, entry) in &cfg.providers {
            links.insert(
                name.clone(),
                Arc::new(Link {
                    name: name.clone(),
                    provider: Provider::from_entry(entry)?,
                    entry: entry.clone(),
                    breaker: CircuitBreaker::new(entry),
                }),
            );
        }
        let extractive_entry = ProviderEntry {
            max_retries: 0,
            ..ProviderEntry::default()
        };
        links.insert(
            EXTRACTIVE.into(),
            Arc::new(Link {
                name: EXTRACTIVE.into(),
                provider: Provider::Extractive,
                breaker: CircuitBreaker::never(),
                entry: extractive_entry,
            }),
        );
        let mut chains = HashMap::new();
        for (name, c) in &cfg.chains {
            let chain_links = c
                .links
                .iter()
                .filter_map(|l| links.get(l).cloned())
                .collect();
            chains.insert(
                name.clone(),
                Chain {
                    name: name.clone(),
                    links: chain_links,
                    escalate_on_refusal: c.escalate_on_refusal,
                    refusal_probe_chars: c.refusal_probe_chars,
                    refusal_patterns: c.refusal_patterns.clone(),
                },
            );
        }
        Ok(Self {
            chains,
            rules: cfg.routing.rules.clone(),
            links,
        })
    }

    /// A link by provider name (health reporting reads its breaker).
    pub fn link(&self, name: &str) -> Option<&Arc<Link>> {
        self.links.get(name)
    }

    /// The chain by name (config validation guarantees the turn's chain exists).
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.get(name)
    }

    /// Cheap-first routing: the index of the link the turn starts at.
    pub fn start_index(&self, chain: &Chain, input: RouteInput) -> usize {
        for rule in &self.rules {
            if rule.chain.as_deref().is_some_and(|c| c != chain.name) {
                continue;
            }
            let holds = rule
                .min_prompt_tokens
                .is_none_or(|v| input.prompt_tokens >= v)
                && rule
                    .max_prompt_tokens
                    .is_none_or(|v| input.prompt_tokens <= v)
                && rule.min_sources.is_none_or(|v| input.sources >= v)
                && rule.max_sources.is_none_or(|v| input.sources <= v)
                && rule.quality.is_none_or(|q| input.quality == Some(q));
            if holds && let Some(i) = chain.links.iter().position(|l| l.name == rule.start) {
                return i;
            }
        }
        0
    }
}
