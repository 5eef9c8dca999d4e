//! What a destination kind is: the one trait the worker, the regulation runner and the
//! preview call, implemented once for classic Webhooks ([`crate::webhook`]) and once for
//! catalog destinations ([`crate::actions`]).
//!
//! Adding a code-backed kind: one file implementing [`DestinationKind`], and one arm in
//! `DestinationConfig::validate` (crates/destinations/src/config.rs) that builds it from
//! its settings. A catalog destination needs no code at all: it is a `catalog/*.json`.

use std::any::Any;
use std::fmt::Debug;

use serde_json::Value;

use crate::actions::ActionsKind;
use crate::http::{Answer, Prepared};
use crate::retry::Verdict;
use crate::routing::Route;

/// What a group of stored events becomes at a destination.
#[derive(Debug, Clone)]
pub enum Requests {
    /// Send these (concurrently; [`DestinationKind::combine`] judges the answers).
    Send(Vec<Prepared>),
    /// Nothing to send for this event: the reason (no action matched, a field skipped it).
    NoMatch(String),
    /// The event cannot become a request: the reason (it is dead-lettered).
    Invalid(String),
}

/// One entry of a preview: what one action (or the webhook) would do with an event.
#[derive(Debug, Clone)]
pub struct PreviewEntry {
    pub action: String,
    pub matched: bool,
    pub requests: Vec<Prepared>,
    pub skipped_reason: Option<String>,
}

/// Why a destination cannot carry a regulation's deletion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeletionError(pub String);

pub trait DestinationKind: Debug + Send + Sync + 'static {
    /// The name Segment shows for this type: also honoured as an `integrations` key.
    fn display_name(&self) -> &str;

    /// The requests for a group of stored events: one event unless `batched` (the
    /// destination's `batch_size` > 1 and the kind sends groups as one request).
    fn requests(&self, payloads: &[&[u8]], batched: bool, allow_private_networks: bool)
        -> Requests;

    /// One verdict for the answers to one group's requests.
    fn combine(&self, answers: &[Answer]) -> Verdict;

    /// The requests that carry a regulation's deletion (`{"type": "delete", "userId",
    /// "anonymousId", …}`); empty when the kind has none for this subject.
    fn deletion(
        &self,
        message: &Value,
        allow_private_networks: bool,
    ) -> Result<Vec<Prepared>, DeletionError>;

    /// What the event would become, per action, without sending; `route` says whether
    /// the destination's filters let it through.
    fn preview(
        &self,
        event: &Value,
        route: &Route,
        batched: bool,
        allow_private_networks: bool,
    ) -> Vec<PreviewEntry>;

    /// The catalog kind behind this one, for what only catalog destinations do (batch
    /// requests per action).
    fn catalog(&self) -> Option<&ActionsKind> {
        None
    }

    /// For tests and diagnostics that need the concrete settings.
    fn as_any(&self) -> &dyn Any;
}

/// The route's reason when it holds the event back.
pub(crate) fn blocked_reason(route: &Route) -> Option<String> {
    match route {
        Route::Send => None,
        Route::Filtered(w) | Route::DroppedByIntegrations(w) => Some(w.clone()),
    }
}
