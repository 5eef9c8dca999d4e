//! One adapter per source type. Each turns what its transport delivers (a Tracking API
//! body, a signed webhook post, a Kafka message) into events and hands them to
//! [`crate::Ingest::accept`]; none stores anything itself.
//!
//! Adding a source type: one file here with its settings type and its adapter, and one
//! field in [`crate::SourceSettings`] (see docs/ARCHITECTURE.md, "Adding a component").

pub mod kafka;
pub mod tracking;
pub mod webhook;
