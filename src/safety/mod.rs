//! Input and output guards around the model: a prompt-injection screen for prompts and for
//! retrieved chunks (documents are an indirect injection path), and redaction of secrets and,
//! optionally, e-mail addresses in answers before they reach clients or the cache.

pub mod injection;
pub mod redact;

pub use injection::screen;
pub use redact::Redactor;
