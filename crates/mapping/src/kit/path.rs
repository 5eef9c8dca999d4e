//! Event paths (`$.properties.products[0].sku`) and gathering an object mapping's fixed
//! paths in one pass over the event.

use std::borrow::Cow;

use serde_json::Value;

use super::*;

/// A parsed event path (`$.properties.products[0].sku`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub(crate) Vec<String>);

impl Path {
    /// Segment's `get` path syntax: a leading `$.` is removed once; `""` or `"."` is the
    /// whole value; keys split on `.` and on `[n]`, `['k']`, `["k"]` (quotes stripped).
    pub fn parse(text: &str) -> Path {
        let t = text.replacen("$.", "", 1);
        if t.is_empty() || t == "." || t == "$" {
            return Path(Vec::new());
        }
        let mut keys = Vec::new();
        let mut cur = String::new();
        let chars: Vec<char> = t.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    keys.push(std::mem::take(&mut cur));
                    i += 1;
                }
                '[' => {
                    // `[n]`, `['k']`, `["k"]`; anything else is a literal character.
                    let close = chars[i..].iter().position(|c| *c == ']').map(|p| p + i);
                    let inner: Option<String> = close.map(|c| chars[i + 1..c].iter().collect());
                    match (close, inner) {
                        (Some(c), Some(inner))
                            if !inner.is_empty()
                                && (inner.chars().all(|ch| ch.is_ascii_digit())
                                    || ((inner.starts_with('\'') && inner.ends_with('\''))
                                        || (inner.starts_with('"') && inner.ends_with('"')))
                                        && inner.len() >= 2) =>
                        {
                            if !cur.is_empty() {
                                keys.push(std::mem::take(&mut cur));
                            }
                            let key = if inner.chars().all(|ch| ch.is_ascii_digit()) {
                                inner
                            } else {
                                inner[1..inner.len() - 1].to_string()
                            };
                            keys.push(key);
                            i = c + 1;
                            if chars.get(i) == Some(&'.') {
                                i += 1;
                            }
                        }
                        _ => {
                            cur.push('[');
                            i += 1;
                        }
                    }
                }
                c => {
                    cur.push(c);
                    i += 1;
                }
            }
        }
        if !cur.is_empty() || keys.is_empty() {
            keys.push(cur);
        }
        Path(keys)
    }

    /// The value at the path, with JavaScript's `prev && prev[key]` walk: a falsy
    /// intermediate (`null`, `false`, `0`, `""`) is the result; a missing key is undefined.
    /// Borrowed from `root` (only a character of a string is a new value).
    #[inline]
    pub fn get_ref<'a>(&self, root: &'a Value) -> Option<Cow<'a, Value>> {
        walk(root, &self.0)
    }
}

#[inline]
pub(super) fn walk<'a>(root: &'a Value, keys: &[String]) -> Option<Cow<'a, Value>> {
    let mut cur = root;
    for (i, key) in keys.iter().enumerate() {
        if falsy(cur) {
            return Some(Cow::Borrowed(cur));
        }
        cur = match cur {
            Value::Object(m) => m.get(key)?,
            Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            Value::String(s) => {
                // A string's character, then the rest of the path from it (JavaScript:
                // `"not a list"[0].name` is undefined, `"ab"[0][0]` is "a").
                let idx = key.parse::<usize>().ok()?;
                let ch = Value::String(s.chars().nth(idx)?.to_string());
                return walk(&ch, &keys[i + 1..]).map(|v| Cow::Owned(v.into_owned()));
            }
            _ => return None,
        };
    }
    Some(Cow::Borrowed(cur))
}

/// How many first keys one [`Gather`] resolves at most (its results live on the stack).
pub(super) const GATHER_MAX: usize = 16;

/// The first keys of the fixed paths among a list of mappings (an object's fields, an
/// action's fields), sorted and deduplicated, so that an object's values for all of them
/// are found in one ordered pass over its entries (a `serde_json` map iterates in the
/// same order) instead of one B-tree search per path: each search compares the key with
/// up to all of a node's keys, `memcmp` by `memcmp`, and the event's few top-level keys
/// are what most paths start with.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Gather {
    keys: Vec<String>,
    /// For each mapping of the list: the index of its path's first key in `keys`.
    slots: Vec<Option<u8>>,
}

/// What [`Gather::run`] found: the value of each gathered key (absent: `None`).
pub(crate) type Found<'a> = Option<[Option<&'a Value>; GATHER_MAX]>;

/// The path of a `@path` mapping with a fixed path.
pub(crate) fn fixed(m: &Mapping) -> Option<&Path> {
    match m {
        Mapping::Path(PathArg::Fixed(p)) => Some(p),
        _ => None,
    }
}

impl Gather {
    /// For a list whose items may be resolved by a fixed path each.
    pub(crate) fn of<'p>(paths: impl Iterator<Item = Option<&'p Path>>) -> Gather {
        let firsts: Vec<Option<&str>> = paths
            .map(|p| p.and_then(|p| p.0.first()).map(String::as_str))
            .collect();
        let mut keys: Vec<String> = firsts.iter().flatten().map(|k| k.to_string()).collect();
        // One pass pays when it replaces at least two searches.
        if keys.len() < 2 {
            return Gather::default();
        }
        keys.sort();
        keys.dedup();
        if keys.len() > GATHER_MAX {
            return Gather::default();
        }
        let slots = firsts
            .iter()
            .map(|f| f.and_then(|k| keys.binary_search_by(|x| x.as_str().cmp(k)).ok()))
            .map(|i| i.map(|i| i as u8))
            .collect();
        Gather { keys, slots }
    }

    /// The gathered keys' values in `root`, when there is something to gather and `root`
    /// is an object.
    #[inline]
    pub(crate) fn run<'a>(&self, root: &'a Value) -> Found<'a> {
        if self.keys.is_empty() {
            return None;
        }
        let Value::Object(m) = root else {
            return None;
        };
        let mut found = [None; GATHER_MAX];
        let mut entries = m.iter();
        let mut cur = entries.next();
        for (i, key) in self.keys.iter().enumerate() {
            while let Some((k, v)) = cur {
                match k.as_str().cmp(key.as_str()) {
                    std::cmp::Ordering::Less => cur = entries.next(),
                    std::cmp::Ordering::Equal => {
                        found[i] = Some(v);
                        cur = entries.next();
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
        }
        Some(found)
    }

    /// `Some(path.get_ref(root))` from what [`Gather::run`] found in `root`, when item `i`
    /// of the list was gathered; `None` when it was not.
    #[inline]
    pub(crate) fn get<'a>(
        &self,
        found: &Found<'a>,
        i: usize,
        path: &Path,
    ) -> Option<Option<Cow<'a, Value>>> {
        let (Some(found), Some(Some(slot))) = (found, self.slots.get(i)) else {
            return None;
        };
        // `root` is an object (not falsy): the walk's first step is the lookup done.
        Some(found[*slot as usize].and_then(|first| walk(first, &path.0[1..])))
    }

    /// `m.eval_out(root)` for item `i` of the list, from what [`Gather::run`] found in
    /// `root` when it is a gathered path.
    #[inline]
    pub(crate) fn eval<'a>(
        &self,
        found: &Found<'a>,
        i: usize,
        m: &'a Mapping,
        root: &'a Value,
    ) -> Option<Out<'a>> {
        if let Some(got) = fixed(m).and_then(|p| self.get(found, i, p)) {
            return got.map(Out::from_cow);
        }
        eval_out(m, root)
    }
}
