//! Identity resolution. Pure, no I/O.
//!
//! Module map:
//! - [`rules`]: blocked values, limits, priorities, caps (`[identity]` in sluice.toml).
//! - [`extract`]: the identifiers, traits and account links of one event.
//! - [`resolve`]: the merge algorithm, a pure function of the set of observations.
//! - [`traits`]: last-write-wins merging of trait values.
//!
//! The state store (`sluice-store`, `profiles`) keeps observations, the resolved
//! identifier → profile map, traits and event references; the profile consumer
//! (`sluice-consumers`) feeds it from the log.

pub mod extract;
pub mod resolve;
pub mod rules;
pub mod traits;

pub use extract::{extract, Collection, Extracted, Ident};
pub use resolve::{anchor, key_type, resolve, Member, Observation, Profile};
pub use rules::{Rules, TypeRule};

#[cfg(test)]
mod props;
