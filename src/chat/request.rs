//! What a turn needs from whoever asks for it: rooms queue these, the OpenAI-compatible
//! endpoint builds one per HTTP request.

use std::sync::Arc;

use uuid::Uuid;

use crate::auth::Principal;
use crate::config::Quality;
use crate::limits::Permit;
use crate::protocol::Member;
use crate::providers::{ChatMessage, Sampling, Tools};
use crate::telemetry::TraceParent;

/// One prompt to answer.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub turn_id: Uuid,
    pub from: Member,
    pub prompt: String,
    pub quality: Option<Quality>,
    /// False when the client opted out of the answer cache.
    pub use_cache: bool,
    /// The chain to use; `None`: `turn.chain` from config (rooms).
    pub chain: Option<String>,
    /// Search the tenant's documents first (rooms: yes; the OpenAI endpoint: per model).
    pub retrieval: bool,
    /// The conversation came from the client (the OpenAI endpoint's earlier messages), not
    /// from turns this server ran: it is screened like the prompt.
    pub client_history: bool,
    /// The client's sampling settings (the OpenAI endpoint); rooms use the providers'.
    pub sampling: Sampling,
    /// The client's own system messages (the OpenAI endpoint): with retrieval they follow
    /// confab's system prompt; without (a chain used as a gateway) they replace it.
    pub client_system: Vec<String>,
    /// Functions the client offers the model and runs itself (the OpenAI endpoint's
    /// `tools`): a call ends the turn with `tool_calls` for the client to answer.
    pub tools: Tools,
    /// The client's conversation as it sent it (the OpenAI endpoint), its last user message
    /// being `prompt`: forwarded with tool calls and results intact. `None`: a room's.
    pub conversation: Option<Vec<ChatMessage>>,
    /// Offer the server-side tools (MCP) the tenant may use: rooms and the RAG alias.
    pub server_tools: bool,
    /// The trace context the client sent (`traceparent`): the turn's span is its child.
    pub trace: Option<TraceParent>,
    pub owner: TurnOwner,
}

impl TurnRequest {
    /// Whether confab's own system prompt opens the conversation: always with retrieval
    /// (its rules for sources), and otherwise unless the client sent its own.
    pub fn uses_own_system_prompt(&self) -> bool {
        self.retrieval || self.client_system.is_empty()
    }
}

/// Who asked: the tenant and user whose budgets the turn spends, and their concurrent-turn
/// slot, held until the turn is dropped (ended or cancelled).
#[derive(Debug, Clone)]
pub struct TurnOwner {
    pub principal: Principal,
    pub permit: Option<Arc<Permit>>,
}
