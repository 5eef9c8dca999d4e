//! Subscription filters and the mapping kit of Segment's Actions destinations. Pure: no
//! I/O, most of the logic of catalog destinations, most of their tests.
//!
//! Module map:
//! - [`fql`]: the subscription (trigger) language — parse once, evaluate per event.
//! - [`kit`]: the mapping kit — `@path`, `@if`, `@template`, … compiled once per
//!   configuration, evaluated per event.
//! - [`fields`]: action fields' types; cleaning, coercion and required-field checks of a
//!   mapped payload before it is sent.

pub mod fields;
pub mod fql;
pub mod kit;

pub use fields::{
    prepare, prepare_out, FieldSpec, FieldType, Format, TypedMapping, ValidationError,
};
pub use fql::{FqlError, Subscription};
pub use kit::{Fields, Mapping, MappingError, Out, Path};
