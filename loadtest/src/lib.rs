//! Tools for exercising confab from outside: a scripted OpenAI-compatible streaming upstream.
//!
//! The mock is a real HTTP server on loopback, so confab's provider code (HTTP, SSE parsing,
//! timeouts, cancellation) runs exactly as against OpenAI, vLLM or llama.cpp.

pub mod bench;
pub mod mock;
