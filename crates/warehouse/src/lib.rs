//! The warehouse destination: every event of a source in the team's own PostgreSQL, in
//! Segment's warehouse schema, so that SQL written against Segment's tables keeps working.
//!
//! Module map:
//! - [`naming`]: table and column names: a byte-for-byte port of Segment's snake-case
//!   function, then PostgreSQL's rules (reserved words, leading digits, 63 bytes).
//! - [`shape`]: one event → the rows it becomes (`tracks` and its event table,
//!   `identifies` and `users`, `pages`, `screens`, `groups` and `accounts`, `aliases`),
//!   with Segment's reserved columns, flattening and column types.
//! - [`load`]: rows into a warehouse, one transaction per table: schema evolution, type
//!   conflicts kept in `sluice_discards`, the column cap, rows the engine refuses; the
//!   engine's own SQL behind the [`load::Dialect`] trait.
//! - [`postgres`]: the PostgreSQL dialect (`COPY` into staging, merge on `id`).
//! - [`settings`]: a warehouse destination's settings (`type = "warehouse"`).
//!
//! The log consumer that feeds the loader is `sluice_consumers::warehouse`.

pub mod load;
pub mod naming;
pub mod postgres;
pub mod settings;
pub mod shape;
