//! Profiles in the state store: identity observations, the resolved identifier → profile
//! map, traits, event references and account links (the algorithm is
//! `sluice_identity::resolve`; this module only keeps its inputs and outputs).
//!
//! Tables:
//! - `id_obs(hash, idents, ts, message_id, source)`: one row per distinct identifier set,
//!   with the earliest (ts, messageId) it was seen at; `obs_idents(ident, hash)` indexes
//!   them by identifier.
//! - `identities(ident, profile, ts, message_id, source)`: the current resolution;
//!   `profiles(id, merged)` the profiles and the ids merged into them.
//! - `traits(ident, key, value, ts, message_id, source)`: last-write-wins per anchor
//!   identifier and key; a profile's traits are the newest over its identifiers.
//! - `profile_events(id, ident_hash, ts, message_id, msg_hash)`: events by anchor
//!   identifier (bodies stay in the event log). The row id is `log_offset * 2 + slot`
//!   (slot 1 for an account's copy of a group call), so rows are appended in log order and
//!   only the small integer index `(ident_hash, ts, msg_hash)` takes random inserts (a
//!   text-keyed table is far slower to file into), and those a batch at a time in index
//!   order. `msg_hash` ([`msg_hash`]) lets the check for a second copy of an event
//!   probe one index entry instead of reading every event of the identifier with the same
//!   timestamp (all of them, when a source sends one fixed timestamp).
//! - `links(user_ident, account_ident, ts)`: users and the accounts (groups) they joined.
//!
//! Filing traits and events under the event's anchor identifier, not a profile id, keeps
//! them correct when late events re-shape profiles: they follow the identifier.

use std::collections::HashMap;

use std::ops::Range;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sluice_identity::traits::TraitValue;
use sluice_identity::{Member, Rules};

use crate::StoreError;

/// Most observations one re-resolution reads; a component beyond it is resolved from
/// its first observations found (logged by the caller through the stats).
pub const MAX_COMPONENT: usize = 20_000;

/// The `msg_hash` of an event reference: a 32-bit hash of the messageId (4 bytes in the
/// index; the copy check compares the messageId itself), never 0 (the column's default,
/// which no filed reference carries).
pub fn msg_hash(message_id: &str) -> i64 {
    match xxhash_rust::xxh3::xxh3_64(message_id.as_bytes()) as u32 as i32 {
        0 => 1,
        h => h as i64,
    }
}

/// What one event contributes (identifier keys as `sluice_identity::Ident::key`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileEvent {
    pub log_offset: u64,
    pub ts: i64,
    pub message_id: String,
    pub source: String,
    pub users: Vec<String>,
    pub accounts: Vec<String>,
    pub user_traits: Option<Map<String, Value>>,
    pub account_traits: Option<Map<String, Value>>,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProfileStepStats {
    /// Identifier sets seen for the first time (or earlier than before).
    pub new_observations: u64,
    /// Connected components re-resolved.
    pub resolved_components: u64,
    /// Components larger than [`MAX_COMPONENT`] observations (resolved in part).
    pub oversized_components: u64,
}

/// A profile as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProfile {
    pub id: String,
    pub members: Vec<Member>,
    pub merged: Vec<String>,
}

/// One event reference of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileEventRef {
    pub ident: String,
    pub ts: i64,
    pub log_offset: u64,
    pub message_id: String,
}

/// Which events of a profile to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// Newest first.
    pub descending: bool,
    /// Continue after this (ts, log_offset), exclusive, in the listing's order.
    pub after: Option<(i64, u64)>,
    pub limit: usize,
}

/// What erasing a subject removed from profile data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErasedProfiles {
    pub identities: u64,
    pub traits: u64,
    pub events: u64,
}

/// The identifier sets already filed, with the time of the key they were filed at: most
/// events repeat a set (an anonymous visitor's next page view), and this spares the
/// lookup. Only the time is kept (16 bytes an entry, no allocation): an event is known
/// when the set was filed at an earlier time — on a tie the messageIds would decide, so a
/// tie asks the database. Updated only after a commit; cleared by erasure; bounded.
#[derive(Default)]
pub struct ObsCache {
    seen: HashMap<i64, i64>,
}

/// ~18 MB of entries at most.
const OBS_CACHE_MAX: usize = 1_000_000;

/// Identifier sets a transaction filed: (hash, ts), for [`ObsCache::remember`].
pub type Filed = Vec<(i64, i64)>;

impl ObsCache {
    /// The set was filed with a key earlier than `(ts, any messageId)`: filing this event
    /// changes nothing.
    pub(crate) fn known(&self, hash: i64, ts: i64) -> bool {
        self.seen.get(&hash).is_some_and(|kts| *kts < ts)
    }

    pub(crate) fn remember(&mut self, filed: Filed) {
        if self.seen.len() + filed.len() > OBS_CACHE_MAX {
            self.seen.clear();
        }
        for (hash, ts) in filed {
            let kts = self.seen.entry(hash).or_insert(ts);
            *kts = (*kts).min(ts);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.seen.clear();
    }
}

/// Profiles: identity resolution's inputs and outputs, traits, event references and
/// links.
#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Files a batch of events' identifiers, traits, event references and links, and
    /// re-resolves the profiles they touch, in one transaction.
    async fn apply_profiles(
        &self,
        events: Vec<ProfileEvent>,
        rules: std::sync::Arc<Rules>,
    ) -> Result<ProfileStepStats, StoreError>;

    /// The profile holding an identifier key (`u|user_id:u1`), or with this id
    /// (`u|segment_id:use_…`).
    async fn profile(&self, key: &str) -> Result<Option<StoredProfile>, StoreError>;

    /// Trait rows filed under these identifiers (every one; merge last-write-wins).
    async fn profile_traits(
        &self,
        idents: Vec<String>,
    ) -> Result<Vec<(String, TraitValue)>, StoreError>;

    /// Event references filed under these identifiers.
    async fn profile_events(
        &self,
        idents: Vec<String>,
        query: EventQuery,
    ) -> Result<Vec<ProfileEventRef>, StoreError>;

    /// Anchors linked to these identifiers (accounts of users, users of accounts).
    async fn profile_links(&self, idents: Vec<String>) -> Result<Vec<String>, StoreError>;

    /// Deletes profile event references of events at log offsets `within` (a partition's
    /// offsets whose bodies are gone with the log's retention). Returns how many.
    async fn prune_profile_events(&self, within: Range<u64>) -> Result<u64, StoreError>;

    /// Removes the identifiers' profile data (see `profiles::erase`).
    async fn erase_profiles(
        &self,
        idents: Vec<String>,
        rules: std::sync::Arc<Rules>,
    ) -> Result<ErasedProfiles, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::ObsCache;

    /// The cache skips an event only when its set was filed strictly earlier: on a tie
    /// the messageIds (not kept) would decide, so the database is asked; and it keeps the
    /// earliest time a set was filed at.
    #[test]
    fn obs_cache_knows_only_strictly_earlier_filings() {
        let mut cache = ObsCache::default();
        assert!(!cache.known(7, 100));
        cache.remember(vec![(7, 100), (7, 90), (7, 120)]);
        assert!(cache.known(7, 91));
        assert!(!cache.known(7, 90), "a tie asks the database");
        assert!(!cache.known(7, 89));
        assert!(!cache.known(8, 1_000));
        cache.clear();
        assert!(!cache.known(7, 1_000));
    }
}
