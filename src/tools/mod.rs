//! Server-side tools the model may call in rooms and through the RAG alias: the tools of
//! the configured MCP servers (`mcp.rs`), and `search_documents` over the tenant's
//! documents when retrieval is on (`search.rs`). The tool box keeps the catalog (listed at boot,
//! refreshed, a server that is down retried), says what a tenant's turns may offer, and
//! runs one round of calls within the turn's budgets: each call checked (offered to the
//! tenant, `turn.max_tool_calls`, `turn.max_cost_usd`), then run with a concurrency slot
//! (`gate.rs`) and its timeout, its output made safe (`output.rs`), every step a `tool`
//! event.

mod gate;
mod mcp;
mod output;
mod round;
mod search;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

pub use self::round::{Budget, Caller, RoundResult};

use self::gate::Gates;
use self::mcp::McpConn;
use self::search::Search;
use crate::cluster::Cluster;
use crate::config::{Config, ToolLimits};
use crate::lifecycle::Lifecycle;
use crate::protocol::SEARCH_DOCUMENTS;
use crate::providers::{ToolDef, Tools};
use crate::retrieval::Retrieval;

/// How often the catalog is listed again; sooner while a server is down.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(30);
const RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Who runs a tool.
#[derive(Clone)]
enum Runner {
    Mcp(Arc<McpConn>),
    /// confab's own `search_documents`.
    Search,
}

/// One tool as offered.
#[derive(Clone)]
struct Entry {
    def: ToolDef,
    runner: Runner,
    limits: ToolLimits,
}

impl Entry {
    /// The MCP server that has the tool; `None` for confab's own.
    fn server(&self) -> Option<&str> {
        match &self.runner {
            Runner::Mcp(conn) => Some(&conn.name),
            Runner::Search => None,
        }
    }

    fn on(&self, conn: &Arc<McpConn>) -> bool {
        matches!(&self.runner, Runner::Mcp(c) if Arc::ptr_eq(c, conn))
    }
}

/// The server-side tools and how to run them.
pub struct ToolBox {
    servers: Vec<Arc<McpConn>>,
    /// Retrieval, when `search_documents` is offered (`turn.search_tool`).
    search: Option<Search>,
    catalog: RwLock<Arc<BTreeMap<String, Entry>>>,
    /// Tenants with an allow-list (`auth.tenants.NAME.tools`); the others get every tool.
    allow: HashMap<String, HashSet<String>>,
    gates: Gates,
    output_chars: usize,
    /// Redact secrets, e-mail addresses.
    redact: (bool, bool),
}

impl ToolBox {
    /// The tool box of `cfg`, its catalog listed once (each server within its connect
    /// timeout; one that is down is left out and retried in the background). With
    /// `retrieval`, `search_documents` is one of the tools.
    pub async fn start(
        cfg: &Config,
        cluster: Option<Arc<Cluster>>,
        retrieval: Option<Arc<Retrieval>>,
        life: &Lifecycle,
    ) -> Arc<Self> {
        let servers: Vec<Arc<McpConn>> = cfg
            .mcp
            .servers
            .iter()
            .map(|(name, s)| Arc::new(McpConn::new(name.clone(), s.clone())))
            .collect();
        let allow = cfg
            .auth
            .tenants
            .iter()
            .filter_map(|(t, tc)| Some((t.clone(), tc.tools.clone()?.into_iter().collect())))
            .collect();
        let search = retrieval.map(|retrieval| Search {
            retrieval,
            screen: cfg.safety.chunks,
        });
        let tb = Arc::new(Self {
            servers,
            search,
            catalog: RwLock::new(Arc::new(BTreeMap::new())),
            allow,
            gates: Gates::new(cluster),
            output_chars: cfg.turn.tool_output_chars,
            redact: (cfg.safety.redact_secrets, cfg.safety.redact_emails),
        });
        if tb.servers.is_empty() {
            tb.refresh().await;
        } else {
            let mut all_up = tb.refresh().await;
            let (tb2, cancel) = (tb.clone(), life.background.clone());
            life.workers.spawn(async move {
                loop {
                    let wait = if all_up { REFRESH } else { RETRY };
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => all_up = tb2.refresh().await,
                    }
                }
            });
        }
        tb
    }

    /// Lists every server's tools again (concurrently); a server that fails keeps the
    /// tools it listed last time, so a blip does not take its tools away mid-conversation.
    /// True when every server answered.
    async fn refresh(&self) -> bool {
        let lists = futures_util::future::join_all(self.servers.iter().map(|s| s.list())).await;
        let old = self.catalog();
        let mut next = self.own_tools();
        let mut all_up = true;
        for (conn, listed) in self.servers.iter().zip(lists) {
            let tools = match listed {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(server = %conn.name, error = %e, "MCP server unavailable; its tools are retried");
                    crate::metrics::mcp_server_up(&conn.name, false);
                    all_up = false;
                    let kept = old.iter().filter(|(_, e)| e.on(conn));
                    next.extend(kept.map(|(n, e)| (n.clone(), e.clone())));
                    continue;
                }
            };
            crate::metrics::mcp_server_up(&conn.name, true);
            for t in tools {
                if !conn.cfg.tools.is_empty() && !conn.cfg.tools.contains(&t.name) {
                    continue;
                }
                if let Some(other) = next.get(&t.name) {
                    let kept = other.server().unwrap_or("confab");
                    tracing::warn!(tool = %t.name, server = %conn.name, %kept, "two tools have the same name; the first is kept");
                    continue;
                }
                let limits = conn.cfg.limits_of(&t.name);
                let def = ToolDef {
                    name: t.name.clone(),
                    description: t.description,
                    parameters: t.schema,
                };
                next.insert(
                    t.name,
                    Entry {
                        def,
                        runner: Runner::Mcp(conn.clone()),
                        limits,
                    },
                );
            }
        }
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        all_up
    }

    /// confab's own tools: `search_documents` when retrieval is on. They come first, so an
    /// MCP tool of the same name is left out.
    fn own_tools(&self) -> BTreeMap<String, Entry> {
        let mut own = BTreeMap::new();
        if self.search.is_some() {
            let entry = Entry {
                def: search::def(),
                runner: Runner::Search,
                limits: ToolLimits {
                    timeout_ms: search::TIMEOUT_MS,
                    max_concurrency: u32::MAX,
                    cost_usd: 0.0,
                },
            };
            own.insert(SEARCH_DOCUMENTS.to_string(), entry);
        }
        own
    }

    fn catalog(&self) -> Arc<BTreeMap<String, Entry>> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `tenant` may use `tool`.
    fn allowed(&self, tenant: &str, tool: &str) -> bool {
        self.allow.get(tenant).is_none_or(|a| a.contains(tool))
    }

    /// The tools a turn of `tenant` offers the model; `search_documents` only to a turn
    /// that `retrieves`.
    pub fn offered(&self, tenant: &str, retrieves: bool) -> Tools {
        let defs = self
            .catalog()
            .values()
            .filter(|e| retrieves || !matches!(e.runner, Runner::Search))
            .filter(|e| self.allowed(tenant, &e.def.name))
            .map(|e| e.def.clone())
            .collect();
        Tools {
            defs,
            choice: None,
            parallel: None,
        }
    }

    /// The metric label of a tool name: the name when it is in the catalog (configured
    /// servers' tools only), else `other`.
    fn label(&self, name: &str) -> String {
        if self.catalog().contains_key(name) {
            name.to_string()
        } else {
            "other".to_string()
        }
    }
}
