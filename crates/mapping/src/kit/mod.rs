//! The mapping kit: Segment's directives (`@path`, `@if`, `@template`, …) compiled once per
//! configuration into a [`Mapping`] and evaluated per event without re-parsing.
//!
//! A mapping is a raw JSON value or a directive: an object whose only keys are one
//! `@name` key (plus optional `_metadata`). Objects and arrays are resolved recursively;
//! scalars are returned unchanged. A value that resolves to *undefined* (a missing path,
//! an `@if` with no branch taken, …) removes its key; `null` is kept. Semantics and edge
//! cases follow segment-compat 3.6 (actions-core 3.170), including JavaScript's
//! truthiness where the reference says so. `@liquid` is not supported (refused at compile
//! time with a clear error). Sluice's own extensions, for catalog presets:
//! `@omit {value, keys}` (the object without those keys), `@lookup {value, table,
//! default?}` (a table entry by the value's string form), `@map {value, each}` (`each`
//! resolved against every element; undefined results dropped; `with`: merged on top of
//! each object result), `@truncateIp` (IPv4 with the last octet 0, else undefined),
//! `@nonEmpty` (undefined for `{}`, `[]`, `""`), `@when {true, then, else}` (JavaScript
//! truthiness), `@not` (negated truthiness), `@trim`, `@date {value, to: iso|date|s|ms|us}`
//! (an ISO-8601 string, or epoch milliseconds, converted; see [`DateTo`]), `@hash {value,
//! algorithm: "sha256"}` (lowercase hex), `@mapValues {value, each}` (an object's values
//! each resolved by `each`, keys kept), `@map {value, each, index: true}` (`each` resolved
//! against `{item, index, outer}`), `@match {value, cases: [{pattern, then | group}],
//! else?}` (the first regular expression that matches a string), `@concat [lists…]` and
//! `@subtract [a, b, …]` (numbers), `@dates {value, to}` (every ISO-8601 text date in an
//! object, at any depth, converted as `@date` does), `@replaceAll {value, pattern, with}`
//! (every match of a regular expression replaced), `@phone {value, country?, format:
//! "e164"}` (a phone number in E.164 by the country's numbering plan).
//!
//! Module map: this file holds the [`Mapping`] tree and its API; [`compile`] the
//! directives' compilation; [`eval_out`] the borrowing evaluator and [`eval`] the
//! building one; [`out`] their result type; [`path`] event paths.

use serde_json::Value;

/// A compile error: where in the mapping (a JSON path like `data.email.@if.then`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mapping at `{at}`: {message}")]
pub struct MappingError {
    pub at: String,
    pub message: String,
}

mod compile;
mod eval;
mod eval_out;
mod out;
mod path;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use compile::*;
use eval::*;
pub(crate) use eval_out::put;
use eval_out::*;
pub use out::*;
pub use path::*;

/// An object mapping's fields (in the mapping's order), with their paths' first keys
/// gathered.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    entries: Vec<(String, Mapping)>,
    gather: Gather,
}

impl From<Vec<(String, Mapping)>> for Fields {
    fn from(entries: Vec<(String, Mapping)>) -> Fields {
        let gather = Gather::of(entries.iter().map(|(_, m)| fixed(m)));
        Fields { entries, gather }
    }
}

impl std::ops::Deref for Fields {
    type Target = [(String, Mapping)];
    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl<'f> IntoIterator for &'f Fields {
    type Item = &'f (String, Mapping);
    type IntoIter = std::slice::Iter<'f, (String, Mapping)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

fn falsy(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// A compiled mapping.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    Raw(Value),
    Object(Fields),
    Array(Vec<Mapping>),
    Path(PathArg),
    Template(Vec<Piece>),
    Literal(Box<Mapping>),
    If {
        blank: bool,
        operand: Box<Mapping>,
        then: Option<Box<Mapping>>,
        otherwise: Option<Box<Mapping>>,
        /// `then` is the operand itself (the "coalesce" pattern): reuse its value.
        then_is_operand: bool,
    },
    Case {
        upper: bool,
        value: Box<Mapping>,
    },
    Replace {
        value: Box<Mapping>,
        rules: Vec<(String, String)>,
        global: bool,
        ignore_case: bool,
    },
    ArrayPath {
        path: PathArg,
        shape: Option<Box<Mapping>>,
    },
    Merge {
        objects: Vec<Mapping>,
        right: bool,
    },
    Transform {
        apply: Box<Mapping>,
        mapping: Box<Mapping>,
    },
    Flatten {
        value: Box<Mapping>,
        separator: String,
        omit_arrays: bool,
    },
    Json {
        encode: bool,
        value: Box<Mapping>,
    },
    ExcludeWhenNull(Box<Mapping>),
    /// Sluice's extension: an object without the listed keys.
    Omit {
        value: Box<Mapping>,
        keys: Vec<String>,
    },
    /// Sluice's extension: the table's entry for the value's string form.
    Lookup {
        value: Box<Mapping>,
        table: Vec<(String, Mapping)>,
        default: Option<Box<Mapping>>,
    },
    /// Sluice's extension: `each` resolved against every element (undefined dropped);
    /// with `with`, object results are merged with it (resolved against the outer value,
    /// its keys win).
    Each {
        value: Box<Mapping>,
        each: Box<Mapping>,
        with: Option<Box<Mapping>>,
    },
    /// Sluice's extension (`@map` with `index: true`): `each` resolved against
    /// `{"item": <element>, "index": <0-based position>, "outer": <the value @map was
    /// resolved against>}` for every element (undefined results dropped), so an element's
    /// mapping can reach the event and its own position.
    EachIndexed {
        value: Box<Mapping>,
        each: Box<Mapping>,
    },
    /// Sluice's extension: the first case whose regular expression matches the value (a
    /// string; anything else takes `else`) gives its result; no case matching: `else`
    /// (absent: undefined).
    Match {
        value: Box<Mapping>,
        cases: Vec<(Pattern, MatchThen)>,
        otherwise: Option<Box<Mapping>>,
    },
    /// Sluice's extension: the lists concatenated in order; a value that is not a list is
    /// one element, an undefined one adds nothing. Always a list.
    Concat(Vec<Mapping>),
    /// Sluice's extension: the first number minus the others; undefined when any operand
    /// is not a number (numeric text included: partners' converters subtract numbers).
    Subtract(Vec<Mapping>),
    /// Sluice's extension: `then` when the operand is truthy (JavaScript's rules), else `else`.
    When {
        test: Box<Mapping>,
        then: Option<Box<Mapping>>,
        otherwise: Option<Box<Mapping>>,
    },
    /// Sluice's extension: the boolean negation of the operand's truthiness.
    Not(Box<Mapping>),
    /// Sluice's extension: a string without leading and trailing whitespace.
    Trim(Box<Mapping>),
    /// Sluice's extension: an IPv4 address with its last octet set to 0 (else undefined).
    TruncateIp(Box<Mapping>),
    /// Sluice's extension: undefined when the value is an empty object, list or string.
    NonEmpty(Box<Mapping>),
    /// Sluice's extension: an object with each value replaced by `each` resolved against
    /// it (its keys kept; a key whose result is undefined is left out); undefined for
    /// anything but an object.
    MapValues {
        value: Box<Mapping>,
        each: Box<Mapping>,
    },
    /// Sluice's extension: a date converted (see [`DateTo`]); undefined when the value is
    /// not a date.
    Date {
        value: Box<Mapping>,
        to: DateTo,
    },
    /// Sluice's extension: the value with every text that is an ISO-8601 date (a day, with
    /// an optional time, fraction and offset) converted as `@date` does, in objects at any depth; lists and
    /// everything else are kept as they are (Customer.io's attribute converter).
    Dates {
        value: Box<Mapping>,
        to: DateTo,
    },
    /// Sluice's extension: the lowercase hex SHA-256 of a string (or a number's text, as
    /// JavaScript writes it); undefined for anything else.
    Hash {
        value: Box<Mapping>,
        /// Segment's smart hashing (`processHashing`): blank text gives `""`, and text
        /// that already is a hex SHA-256 (64 hex digits, either case) is kept as it is.
        keep_hashed: bool,
    },
    /// Sluice's extension: a phone number in E.164 (`+905551234567`), read with the
    /// country's numbering plan (ISO 3166 alpha-2, `country` resolved against the same
    /// value) when it has no `+`; undefined unless it is a valid number of that country
    /// (libphonenumber's `isValidNumberForRegion`), or, without a country, a valid
    /// international number.
    Phone {
        value: Box<Mapping>,
        country: Option<Box<Mapping>>,
    },
    /// Sluice's extension: every match of the regular expression in a string replaced by
    /// `with` (`$1`, `${name}`: capture groups); anything but a string comes back as it is.
    ReplaceAll {
        value: Box<Mapping>,
        pattern: Pattern,
        with: String,
    },
}

/// A compiled regular expression (Rust's `regex` syntax, linear-time matching), equal to
/// another when written the same.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// What a `@match` case gives: a mapping resolved against the same value as `@match`,
/// or the text of a capture group of the match (undefined when the group took no part).
#[derive(Debug, Clone, PartialEq)]
pub enum MatchThen {
    Then(Box<Mapping>),
    Group(usize),
}

/// What `@date` converts to. A date is an ISO-8601 string (lenient, as
/// `sluice_spec::time` reads clients' timestamps; no offset means UTC), or a number or
/// numeric text: milliseconds since the epoch for `iso` and `date`, kept as the number
/// for the epoch units (as partners' own converters do with numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateTo {
    /// `2026-12-07T10:00:00.000Z` (JavaScript's `toISOString`).
    Iso,
    /// `2026-12-07` (UTC).
    Day,
    /// Whole seconds since the epoch (rounded down).
    Seconds,
    Millis,
    Micros,
}

/// A path known at compile time, or a mapping that resolves to one per event.
#[derive(Debug, Clone, PartialEq)]
pub enum PathArg {
    Fixed(Path),
    Dynamic(Box<Mapping>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Path(Path),
}

const DIRECTIVES: &[&str] = &[
    "@path",
    "@template",
    "@literal",
    "@if",
    "@case",
    "@replace",
    "@arrayPath",
    "@merge",
    "@transform",
    "@flatten",
    "@json",
    "@excludeWhenNull",
    "@omit",
    "@lookup",
    "@map",
    "@truncateIp",
    "@nonEmpty",
    "@when",
    "@not",
    "@trim",
    "@date",
    "@hash",
    "@mapValues",
    "@match",
    "@concat",
    "@subtract",
    "@dates",
    "@replaceAll",
    "@phone",
];

impl Mapping {
    pub fn compile(v: &Value) -> Result<Mapping, MappingError> {
        compile(v, "")
    }

    /// Resolves against an event. `None`: undefined (the key is removed by the caller).
    pub fn eval(&self, event: &Value) -> Option<Value> {
        eval(self, event)
    }

    /// [`Mapping::eval`] without copying: what comes from the event or the mapping is
    /// borrowed, objects are lists of entries in the mapping's order. `into_value` of the
    /// result equals `eval`'s result.
    pub fn eval_out<'a>(&'a self, event: &'a Value) -> Option<Out<'a>> {
        eval_out(self, event)
    }
}
