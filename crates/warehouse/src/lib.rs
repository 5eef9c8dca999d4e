//! The warehouse destination: every event of a source in the team's own PostgreSQL, in
//! Segment's warehouse schema, so that SQL written against Segment's tables keeps working.
//!
//! Module map:
//! - [`naming`]: table and column names: a byte-for-byte port of Segment's snake-case
//!   function, then PostgreSQL's rules (reserved words, leading digits, 63 bytes).
//! - [`shape`]: one event → the rows it becomes (`tracks` and its event table,
//!   `identifies` and `users`, `pages`, `screens`, `groups` and `accounts`, `aliases`),
//!   with Segment's reserved columns, flattening and column types.
//!
//! Pure so far: the loader (COPY into a staging table, merge on `id`, schema evolution)
//! and the log consumer build on these.

pub mod naming;
pub mod shape;
