//! Document ingestion. This first cut takes plain text: chunk → embed in bulk → upsert.
//! (Parsers, background jobs and progress come with the ingestion pipeline.)

pub mod chunk;
