//! OpenTelemetry traces: one trace per turn and per upload, exported over OTLP/HTTP by the
//! SDK's batch processor (its own thread: a turn never waits for the collector), and the
//! W3C trace context taken from clients and handed on to upstreams. Off, and free, while
//! `telemetry.otlp_endpoint` is unset: no layer, no propagator, and the phase spans (debug
//! level, wanted by no other layer) are never built.
//!
//! Spans are `tracing` spans; the layer (`tracing-opentelemetry`) turns confab's into
//! OpenTelemetry spans, and events with target [`EVENTS`] into span events (retries,
//! breaker decisions, the first token). Attribute names follow OpenTelemetry's GenAI
//! conventions (`gen_ai.*`) and confab's own (`confab.*`); no prompt or answer text unless a
//! turn is captured (`telemetry.capture_ratio`, target [`CAPTURE`]).

mod export;
mod propagate;

pub use export::{Telemetry, start};
pub use propagate::{TraceParent, inject, trace_id};

/// Target of the events that become span events (and nothing else).
pub const EVENTS: &str = "confab::trace";
/// Target of the captured texts of a sampled turn (span events only; never logged).
pub const CAPTURE: &str = "confab::capture";
