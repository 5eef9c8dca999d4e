//! [`Out`]: what the borrowed evaluator returns, two words wide.

use std::borrow::Cow;

use serde_json::Value;

use super::*;

/// A resolved value that borrows from the event (and the mapping) where it can: the
/// evaluator's and field typing's working form, made a [`Value`] once at the end.
///
/// Two words (every variant holds one plain pointer), so it is passed and returned in
/// registers: as a wider enum each result went through the stack, and reading it back
/// stalled on store forwarding (a quarter of the evaluator's time, measured with perf).
/// Lists are a boxed `Vec`, not a one-pointer `ThinVec`: that type is `repr(C)`, which
/// makes rustc return the enum through memory again (checked in the disassembly).
#[derive(Debug, Clone, PartialEq)]
pub enum Out<'a> {
    Ref(&'a Value),
    Owned(Box<Value>),
    /// An object's entries (keys unique).
    Object(Box<Vec<(Cow<'a, str>, Out<'a>)>>),
    Array(Box<Vec<Out<'a>>>),
}

const _: () = assert!(std::mem::size_of::<Out>() == 2 * std::mem::size_of::<usize>());

/// `null`, `true` and `false`, for results that are one of them.
pub(crate) static NULL: Value = Value::Null;
pub(crate) static TRUE: Value = Value::Bool(true);
pub(crate) static FALSE: Value = Value::Bool(false);

/// Serialises as [`Out::into_value`]'s result would (object keys in sorted order, as a
/// `serde_json::Map` has them) without building it.
impl serde::Serialize for Out<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Out::Ref(v) => v.serialize(s),
            Out::Owned(v) => v.serialize(s),
            Out::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items.iter() {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Out::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                if entries.is_sorted_by(|a, b| a.0 <= b.0) {
                    for (k, v) in entries.iter() {
                        map.serialize_entry(k.as_ref(), v)?;
                    }
                } else {
                    let mut sorted: Vec<&(Cow<str>, Out)> = entries.iter().collect();
                    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    for (k, v) in sorted {
                        map.serialize_entry(k.as_ref(), v)?;
                    }
                }
                map.end()
            }
        }
    }
}

impl<'a> Out<'a> {
    pub fn into_value(self) -> Value {
        match self {
            Out::Ref(v) => v.clone(),
            Out::Owned(v) => *v,
            Out::Object(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_value()))
                    .collect(),
            ),
            Out::Array(items) => Value::Array(items.into_iter().map(Out::into_value).collect()),
        }
    }

    pub(crate) fn from_cow(v: Cow<'a, Value>) -> Out<'a> {
        match v {
            Cow::Borrowed(v) => Out::Ref(v),
            Cow::Owned(v) => Out::owned(v),
        }
    }

    /// An owned value (`null` and booleans need no allocation).
    pub fn object(entries: Vec<(Cow<'a, str>, Out<'a>)>) -> Out<'a> {
        Out::Object(Box::new(entries))
    }

    pub fn array(items: Vec<Out<'a>>) -> Out<'a> {
        Out::Array(Box::new(items))
    }

    pub fn owned(v: Value) -> Out<'a> {
        match v {
            Value::Null => Out::Ref(&NULL),
            Value::Bool(true) => Out::Ref(&TRUE),
            Value::Bool(false) => Out::Ref(&FALSE),
            v => Out::Owned(Box::new(v)),
        }
    }

    /// The value itself when it is a plain one (not an entry list or item list).
    pub fn as_value(&self) -> Option<&Value> {
        match self {
            Out::Ref(v) => Some(v),
            Out::Owned(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        self.as_value().is_some_and(Value::is_null)
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_value().and_then(Value::as_str)
    }

    fn is_array(&self) -> bool {
        matches!(self, Out::Array(_)) || self.as_value().is_some_and(Value::is_array)
    }

    pub(crate) fn falsy(&self) -> bool {
        self.as_value().is_some_and(falsy)
    }

    /// JavaScript's `v == ""`.
    pub(crate) fn loose_blank(&self) -> bool {
        match self {
            Out::Array(a) => {
                a.is_empty() || (a.len() == 1 && a[0].loose_blank() && !a[0].is_array())
            }
            Out::Object(_) => false,
            v => v.as_value().is_some_and(loose_eq_empty_string),
        }
    }

    /// An object's entries (borrowed, moved or as they are), or `None` for a non-object.
    pub fn into_entries(self) -> Option<Vec<(Cow<'a, str>, Out<'a>)>> {
        self.object_entries().ok()
    }

    /// An object's entries, or `Err(self)` for a non-object.
    pub(crate) fn object_entries(self) -> Result<Vec<(Cow<'a, str>, Out<'a>)>, Out<'a>> {
        match self {
            Out::Object(entries) => Ok(*entries),
            Out::Ref(Value::Object(m)) => Ok(m
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Out::Ref(v)))
                .collect()),
            Out::Owned(v) => match *v {
                Value::Object(m) => Ok(m
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Out::owned(v)))
                    .collect()),
                v => Err(Out::Owned(Box::new(v))),
            },
            other => Err(other),
        }
    }

    /// A list's items, or `Err(self)` for a non-list.
    pub fn into_items(self) -> Result<Vec<Out<'a>>, Out<'a>> {
        match self {
            Out::Array(items) => Ok(*items),
            Out::Ref(Value::Array(a)) => Ok(a.iter().map(Out::Ref).collect()),
            Out::Owned(v) => match *v {
                Value::Array(a) => Ok(a.into_iter().map(Out::owned).collect()),
                v => Err(Out::Owned(Box::new(v))),
            },
            other => Err(other),
        }
    }
}
