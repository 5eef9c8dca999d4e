//! The router: every destination is a consumer of the event log with its own cursor,
//! lanes, retry queue and dead letters.
//!
//! Module map:
//! - [`config`]: a destination's configuration (TOML and JSON) and its validation.
//! - [`catalog`]: the destination catalog as data (`catalog/*.json`, built in).
//! - [`actions`]: catalog destinations at run time: subscriptions, mappings, requests.
//! - [`router`]: the set of running destinations and the admin operations (create,
//!   delivery report, event tester, dead letters, replay).
//! - [`worker`]: one destination's consumer — read, route, send through lanes, record,
//!   retry, commit. Its module docs state the delivery and ordering guarantees.
//! - [`routing`]: the `integrations` object and event filters (pure).
//! - [`kind`]: the `DestinationKind` trait: what a type does with events, implemented by
//!   [`webhook`] and [`actions`].
//! - [`webhook`]: Segment's classic Webhooks requests and signature (pure).
//! - [`http`]: the outbound client shared by every type (timeouts, no redirects).
//! - [`retry`]: the retry classifier and the backoff schedule (pure).
//! - [`ssrf`]: the guard against private-network targets.
//! - [`stats`]: delivery counts, latency histograms and Prometheus metrics.
//! - [`duration`]: `"5s"`-style durations in configuration.

pub mod actions;
pub mod catalog;
pub mod config;
pub mod duration;
pub mod enrich;
pub mod http;
pub mod kind;
pub mod retry;
pub mod router;
pub mod routing;
pub mod ssrf;
pub mod stats;
pub mod webhook;
pub mod worker;

pub use config::{ConfigError, Destination, DestinationConfig};
pub use kind::DestinationKind;
pub use router::{DeletionOutcome, DeletionStatus, ReplayJob, ReplayStatus, Router, RouterError};
