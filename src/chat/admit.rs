//! Admit: the checks that end a turn before it costs anything. A draining server, an unknown
//! chain or a prompt the screen blocks are refused; a flagged prompt goes on, marked.

use tokio::time::Instant;
use uuid::Uuid;

use super::turn::Turn;
use super::{Rejection, TurnEngine, TurnRequest, TurnSink};
use crate::cache::{Scope, conversation_state};
use crate::config::ScreenAction;
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;
use crate::protocol::TurnSnapshot;

impl TurnEngine {
    /// The admitted turn, or the rejection to send for `turn_id`.
    pub(super) fn admit<'a>(
        &'a self,
        sink: &'a dyn TurnSink,
        req: TurnRequest,
        life: &Lifecycle,
    ) -> Result<Turn<'a>, (Uuid, Rejection)> {
        let turn_id = req.turn_id;
        let refuse = move |r: Rejection| (turn_id, r);
        if life.is_draining() {
            return Err(refuse(Rejection::new(
                ErrorCode::ShuttingDown,
                "server is shutting down; send the prompt again after reconnecting",
            )));
        }
        let chain_name = req.chain.as_deref().unwrap_or(&self.cfg.chain);
        let Some(chain) = self.models.chain(chain_name) else {
            let message = format!("no chain named {chain_name:?} is configured");
            return Err(refuse(Rejection::new(ErrorCode::Internal, message)));
        };
        let started = Instant::now();
        let history = sink.history();
        let flagged = self.screen(&req, &history).map_err(refuse)?;
        let tenant = sink.tenant().to_string();
        let retrieves = req.retrieval && self.retrieval.is_some();
        let scope = (self.cache.is_some() && req.use_cache).then(|| Scope {
            corpus_version: self
                .retrieval
                .as_ref()
                .map_or(0, |r| r.corpus_version(&tenant)),
            conversation: conversation_state(
                (req.uses_own_system_prompt(), &req.client_system),
                &history,
            ),
            chain: chain.name.clone(),
            retrieval: retrieves,
        });
        Ok(Turn {
            sink,
            req,
            chain,
            tenant,
            history,
            started,
            flagged,
            scope,
            span: tracing::Span::none(),
        })
    }

    /// The injection screen on everything from the asker that reaches the model: the
    /// prompt, the speaker's name, its own system messages and — when the client supplied
    /// the conversation (the OpenAI endpoint) — every earlier message. `Err` when it blocks,
    /// the rule when it flags.
    pub(super) fn screen(
        &self,
        req: &TurnRequest,
        history: &[TurnSnapshot],
    ) -> Result<Option<&'static str>, Rejection> {
        let action = self.safety.prompts;
        if action == ScreenAction::Off {
            return Ok(None);
        }
        let earlier = history
            .iter()
            .filter(|_| req.client_history)
            .flat_map(|t| [t.prompt.as_str(), t.answer.as_str(), t.from.name.as_str()]);
        let system = req.client_system.iter().map(String::as_str);
        // Tool results and the calls a client says the model made reach the model too.
        let exchanged = req.conversation.iter().flatten().flat_map(|m| {
            std::iter::once(m.content.as_str())
                .chain(m.tool_calls.iter().map(|c| c.arguments.as_str()))
        });
        let texts = [req.prompt.as_str(), req.from.name.as_str()]
            .into_iter()
            .chain(system)
            .chain(earlier)
            .chain(exchanged);
        let Some(rule) = texts.into_iter().find_map(crate::safety::screen) else {
            return Ok(None);
        };
        let blocked = action == ScreenAction::Block;
        crate::metrics::screened("prompt", rule, if blocked { "blocked" } else { "flagged" });
        if blocked {
            return Err(Rejection::new(
                ErrorCode::PromptRejected,
                format!("the prompt looks like an injection attempt ({rule}); rephrase it"),
            ));
        }
        Ok(Some(rule))
    }
}
