//! One MCP server: connected over streamable HTTP or to a child process on stdio (rmcp),
//! its tools listed, its tools called. A connection that breaks is dropped and made again
//! on the next use, so a server that restarts comes back without confab restarting.

use std::sync::Arc;

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use tokio::sync::Mutex;

use crate::config::{McpServer, ms};

type Session = RunningService<RoleClient, ()>;

/// One configured server and its live session, if any.
pub struct McpConn {
    pub name: String,
    pub cfg: McpServer,
    session: Mutex<Option<Arc<Session>>>,
}

/// A tool as its server lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub description: String,
    pub schema: serde_json::Value,
}

/// What a call returned: its text, and whether the tool said it failed.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub is_error: bool,
}

impl McpConn {
    pub fn new(name: String, cfg: McpServer) -> Self {
        Self {
            name,
            cfg,
            session: Mutex::new(None),
        }
    }

    /// Opens a session within the connect timeout.
    async fn open(&self) -> Result<Session, String> {
        let connect = async {
            match (&self.cfg.url, &self.cfg.command) {
                (Some(url), _) => {
                    let transport = StreamableHttpClientTransport::from_uri(url.as_str());
                    ().serve(transport).await.map_err(|e| e.to_string())
                }
                (None, Some(cmd)) => {
                    let mut command = tokio::process::Command::new(cmd);
                    command.args(&self.cfg.args).kill_on_drop(true);
                    let transport = TokioChildProcess::new(command).map_err(|e| e.to_string())?;
                    ().serve(transport).await.map_err(|e| e.to_string())
                }
                (None, None) => Err("neither url nor command is set".to_string()),
            }
        };
        match tokio::time::timeout(ms(self.cfg.connect_timeout_ms), connect).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no session within {} ms",
                self.cfg.connect_timeout_ms
            )),
        }
    }

    /// The live session, opened if there is none (or the last one closed).
    async fn session(&self) -> Result<Arc<Session>, String> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let s = Arc::new(self.open().await?);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Forgets a session that failed, so the next use opens another.
    async fn drop_session(&self, failed: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, failed)) {
            *slot = None;
        }
    }

    /// The server's tools.
    pub async fn list(&self) -> Result<Vec<Listed>, String> {
        let s = self.session().await?;
        let listing =
            tokio::time::timeout(ms(self.cfg.connect_timeout_ms), s.list_all_tools()).await;
        let tools = match listing {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.drop_session(&s).await;
                return Err(e.to_string());
            }
            Err(_) => return Err("listing the tools timed out".into()),
        };
        Ok(tools
            .into_iter()
            .map(|t| Listed {
                name: t.name.to_string(),
                description: t.description.map(|d| d.to_string()).unwrap_or_default(),
                schema: serde_json::Value::Object((*t.input_schema).clone()),
            })
            .collect())
    }

    /// Calls `tool` with `args`; the caller bounds the time (dropping the future abandons
    /// the call, and rmcp tells the server it was cancelled).
    pub async fn call(&self, tool: &str, args: JsonObject) -> Result<Reply, String> {
        let s = self.session().await?;
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
        match s.call_tool(params).await {
            Ok(result) => Ok(reply(&result)),
            Err(e) => {
                if s.is_closed() {
                    self.drop_session(&s).await;
                }
                Err(e.to_string())
            }
        }
    }
}

/// The text of a result: its text blocks, other blocks named, structured content as JSON
/// when there is no text.
fn reply(result: &CallToolResult) -> Reply {
    let blocks = serde_json::to_value(&result.content).unwrap_or_default();
    let mut parts: Vec<String> = Vec::new();
    for b in blocks.as_array().into_iter().flatten() {
        match b["type"].as_str() {
            Some("text") => parts.push(b["text"].as_str().unwrap_or("").to_string()),
            Some(other) => parts.push(format!("[{other} content]")),
            None => {}
        }
    }
    if parts.is_empty()
        && let Some(v) = &result.structured_content
    {
        parts.push(v.to_string());
    }
    Reply {
        text: parts.join("\n"),
        is_error: result.is_error.unwrap_or(false),
    }
}
