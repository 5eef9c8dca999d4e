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
//! truthiness), `@not` (negated truthiness), `@trim`.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

/// A compile error: where in the mapping (a JSON path like `data.email.@if.then`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mapping at `{at}`: {message}")]
pub struct MappingError {
    pub at: String,
    pub message: String,
}

/// A parsed event path (`$.properties.products[0].sku`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(Vec<String>);

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
fn walk<'a>(root: &'a Value, keys: &[String]) -> Option<Cow<'a, Value>> {
    let mut cur = root;
    for key in keys {
        if falsy(cur) {
            return Some(Cow::Borrowed(cur));
        }
        cur = match cur {
            Value::Object(m) => m.get(key)?,
            Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            Value::String(s) => {
                let idx = key.parse::<usize>().ok()?;
                let ch = s.chars().nth(idx)?;
                return Some(Cow::Owned(Value::String(ch.to_string())));
            }
            _ => return None,
        };
    }
    Some(Cow::Borrowed(cur))
}

/// How many first keys one [`Gather`] resolves at most (its results live on the stack).
const GATHER_MAX: usize = 16;

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

    fn from_cow(v: Cow<'a, Value>) -> Out<'a> {
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

    fn falsy(&self) -> bool {
        self.as_value().is_some_and(falsy)
    }

    /// JavaScript's `v == ""`.
    fn loose_blank(&self) -> bool {
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
    fn object_entries(self) -> Result<Vec<(Cow<'a, str>, Out<'a>)>, Out<'a>> {
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

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn err(at: &str, message: impl Into<String>) -> MappingError {
    MappingError {
        at: if at.is_empty() {
            "(root)".into()
        } else {
            at.to_string()
        },
        message: message.into(),
    }
}

fn compile(v: &Value, at: &str) -> Result<Mapping, MappingError> {
    match v {
        Value::Array(items) => Ok(Mapping::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| compile(item, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(m) => {
            let at_keys: Vec<&String> = m.keys().filter(|k| k.starts_with('@')).collect();
            if at_keys.is_empty() {
                let mut fields = Vec::with_capacity(m.len());
                for (k, val) in m {
                    fields.push((k.clone(), compile(val, &join(at, k))?));
                }
                return Ok(Mapping::Object(fields.into()));
            }
            if at_keys.len() > 1 {
                return Err(err(
                    at,
                    format!(
                        "a directive object has exactly one @-key, not {}",
                        at_keys.len()
                    ),
                ));
            }
            let name = at_keys[0].as_str();
            if let Some(other) = m.keys().find(|k| !k.starts_with('@') && *k != "_metadata") {
                return Err(err(
                    at,
                    format!("{name} cannot be mixed with the plain key {other:?}"),
                ));
            }
            directive(name, &m[name], &join(at, name))
        }
        scalar => Ok(Mapping::Raw(scalar.clone())),
    }
}

fn obj<'a>(
    v: &'a Value,
    at: &str,
    name: &str,
    shape: &str,
) -> Result<&'a Map<String, Value>, MappingError> {
    v.as_object()
        .ok_or_else(|| err(at, format!("{name} takes an object {shape}")))
}

fn path_arg(v: &Value, at: &str, name: &str) -> Result<PathArg, MappingError> {
    match v {
        Value::String(s) => Ok(PathArg::Fixed(Path::parse(s))),
        Value::Object(_) => Ok(PathArg::Dynamic(Box::new(compile(v, at)?))),
        _ => Err(err(
            at,
            format!("{name} takes a path string like \"$.properties.total\""),
        )),
    }
}

fn directive(name: &str, arg: &Value, at: &str) -> Result<Mapping, MappingError> {
    match name {
        "@path" => Ok(Mapping::Path(path_arg(arg, at, "@path")?)),
        "@template" => {
            let Value::String(t) = arg else {
                return Err(err(
                    at,
                    "@template takes a string like \"Hi {{traits.name}}\"",
                ));
            };
            Ok(Mapping::Template(template(t)))
        }
        "@literal" => Ok(Mapping::Literal(Box::new(compile(arg, at)?))),
        "@if" => {
            let m = obj(arg, at, "@if", "{exists|blank, then?, else?}")?;
            for k in m.keys() {
                if !matches!(k.as_str(), "exists" | "blank" | "then" | "else") {
                    return Err(err(
                        &join(at, k),
                        "is not an @if key (exists, blank, then, else)",
                    ));
                }
            }
            let (blank, operand) = match (m.get("exists"), m.get("blank")) {
                (Some(x), None) => (false, x),
                (None, Some(x)) => (true, x),
                _ => return Err(err(at, "@if needs exactly one of `exists` or `blank`")),
            };
            let operand = compile(operand, &join(at, if blank { "blank" } else { "exists" }))?;
            let then = m
                .get("then")
                .map(|t| compile(t, &join(at, "then")))
                .transpose()?;
            Ok(Mapping::If {
                blank,
                then_is_operand: then.as_ref() == Some(&operand),
                operand: Box::new(operand),
                then: then.map(Box::new),
                otherwise: m
                    .get("else")
                    .map(|t| compile(t, &join(at, "else")))
                    .transpose()?
                    .map(Box::new),
            })
        }
        "@case" => {
            let m = obj(arg, at, "@case", "{operator: \"lower\"|\"upper\", value}")?;
            let upper = match m.get("operator").and_then(Value::as_str) {
                Some("lower") => false,
                Some("upper") => true,
                other => {
                    return Err(err(
                        &join(at, "operator"),
                        format!("must be \"lower\" or \"upper\", not {other:?}"),
                    ))
                }
            };
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@case needs a `value`"))?;
            Ok(Mapping::Case {
                upper,
                value: Box::new(compile(value, &join(at, "value"))?),
            })
        }
        "@replace" => {
            let m = obj(
                arg,
                at,
                "@replace",
                "{value, pattern, replacement?, global?, ignorecase?, pattern2?, replacement2?}",
            )?;
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@replace needs a `value`"))?;
            let mut rules = Vec::new();
            for (p, r) in [("pattern", "replacement"), ("pattern2", "replacement2")] {
                let Some(pat) = m.get(p) else {
                    if p == "pattern" {
                        return Err(err(at, "@replace needs a `pattern`"));
                    }
                    continue;
                };
                let pat = pat
                    .as_str()
                    .ok_or_else(|| err(&join(at, p), "must be a string"))?;
                if pat.is_empty() || pat.chars().count() > 10 {
                    return Err(err(&join(at, p), "must be 1 to 10 characters"));
                }
                let rep = match m.get(r) {
                    None => "",
                    Some(v) => v
                        .as_str()
                        .ok_or_else(|| err(&join(at, r), "must be a string"))?,
                };
                if rep.chars().count() > 10 {
                    return Err(err(&join(at, r), "must be at most 10 characters"));
                }
                rules.push((pat.to_string(), rep.to_string()));
            }
            let flag = |k: &str, default: bool| -> Result<bool, MappingError> {
                match m.get(k) {
                    None => Ok(default),
                    Some(Value::Bool(b)) => Ok(*b),
                    Some(_) => Err(err(&join(at, k), "must be true or false")),
                }
            };
            Ok(Mapping::Replace {
                value: Box::new(compile(value, &join(at, "value"))?),
                rules,
                global: flag("global", true)?,
                ignore_case: flag("ignorecase", false)?,
            })
        }
        "@arrayPath" => {
            let Value::Array(items) = arg else {
                return Err(err(at, "@arrayPath takes [path, shape?]"));
            };
            if items.is_empty() || items.len() > 2 {
                return Err(err(at, "@arrayPath takes [path, shape?]"));
            }
            let path = path_arg(&items[0], &format!("{at}[0]"), "@arrayPath")?;
            let shape = match items.get(1) {
                Some(s) => Some(Box::new(compile(s, &format!("{at}[1]"))?)),
                None => None,
            };
            Ok(Mapping::ArrayPath { path, shape })
        }
        "@merge" => {
            let m = obj(
                arg,
                at,
                "@merge",
                "{objects: [...], direction: \"left\"|\"right\"}",
            )?;
            let right = match m.get("direction").and_then(Value::as_str) {
                Some("right") => true,
                Some("left") => false,
                other => {
                    return Err(err(
                        &join(at, "direction"),
                        format!("must be \"left\" or \"right\", not {other:?}"),
                    ))
                }
            };
            let Some(Value::Array(objects)) = m.get("objects") else {
                return Err(err(&join(at, "objects"), "must be a list"));
            };
            Ok(Mapping::Merge {
                objects: objects
                    .iter()
                    .enumerate()
                    .map(|(i, o)| compile(o, &format!("{at}.objects[{i}]")))
                    .collect::<Result<_, _>>()?,
                right,
            })
        }
        "@transform" => {
            let m = obj(arg, at, "@transform", "{apply, mapping}")?;
            let apply = m
                .get("apply")
                .ok_or_else(|| err(at, "@transform needs `apply`"))?;
            let mapping = m
                .get("mapping")
                .ok_or_else(|| err(at, "@transform needs `mapping`"))?;
            Ok(Mapping::Transform {
                apply: Box::new(compile(apply, &join(at, "apply"))?),
                mapping: Box::new(compile(mapping, &join(at, "mapping"))?),
            })
        }
        "@flatten" => {
            let m = obj(arg, at, "@flatten", "{value, separator, omitArrays?}")?;
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@flatten needs a `value`"))?;
            let separator = m
                .get("separator")
                .and_then(Value::as_str)
                .ok_or_else(|| err(&join(at, "separator"), "must be a string"))?;
            let omit_arrays = match m.get("omitArrays") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(err(&join(at, "omitArrays"), "must be true or false")),
            };
            Ok(Mapping::Flatten {
                value: Box::new(compile(value, &join(at, "value"))?),
                separator: separator.to_string(),
                omit_arrays,
            })
        }
        "@json" => {
            let m = obj(arg, at, "@json", "{mode: \"encode\"|\"decode\", value}")?;
            let encode = match m.get("mode").and_then(Value::as_str) {
                Some("encode") => true,
                Some("decode") => false,
                other => {
                    return Err(err(
                        &join(at, "mode"),
                        format!("must be \"encode\" or \"decode\", not {other:?}"),
                    ))
                }
            };
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@json needs a `value`"))?;
            Ok(Mapping::Json {
                encode,
                value: Box::new(compile(value, &join(at, "value"))?),
            })
        }
        "@excludeWhenNull" => Ok(Mapping::ExcludeWhenNull(Box::new(compile(arg, at)?))),
        "@lookup" => {
            let m = obj(arg, at, "@lookup", "{value, table: {...}, default?}")?;
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@lookup needs a `value`"))?;
            let Some(Value::Object(t)) = m.get("table") else {
                return Err(err(&join(at, "table"), "must be an object of key → value"));
            };
            let mut table = Vec::with_capacity(t.len());
            for (k, v) in t {
                table.push((k.clone(), compile(v, &format!("{at}.table.{k}"))?));
            }
            Ok(Mapping::Lookup {
                value: Box::new(compile(value, &join(at, "value"))?),
                table,
                default: m
                    .get("default")
                    .map(|d| compile(d, &join(at, "default")))
                    .transpose()?
                    .map(Box::new),
            })
        }
        "@map" => {
            let m = obj(arg, at, "@map", "{value, each}")?;
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@map needs a `value`"))?;
            let each = m.get("each").ok_or_else(|| err(at, "@map needs `each`"))?;
            Ok(Mapping::Each {
                value: Box::new(compile(value, &join(at, "value"))?),
                each: Box::new(compile(each, &join(at, "each"))?),
                with: m
                    .get("with")
                    .map(|w| compile(w, &join(at, "with")))
                    .transpose()?
                    .map(Box::new),
            })
        }
        "@when" => {
            let m = obj(arg, at, "@when", "{true, then?, else?}")?;
            for k in m.keys() {
                if !matches!(k.as_str(), "true" | "then" | "else") {
                    return Err(err(&join(at, k), "is not a @when key (true, then, else)"));
                }
            }
            let test = m.get("true").ok_or_else(|| err(at, "@when needs `true`"))?;
            let branch = |k: &str| -> Result<Option<Box<Mapping>>, MappingError> {
                m.get(k)
                    .map(|v| compile(v, &join(at, k)))
                    .transpose()
                    .map(|o| o.map(Box::new))
            };
            Ok(Mapping::When {
                test: Box::new(compile(test, &join(at, "true"))?),
                then: branch("then")?,
                otherwise: branch("else")?,
            })
        }
        "@not" => Ok(Mapping::Not(Box::new(compile(arg, at)?))),
        "@trim" => Ok(Mapping::Trim(Box::new(compile(arg, at)?))),
        "@truncateIp" => Ok(Mapping::TruncateIp(Box::new(compile(arg, at)?))),
        "@nonEmpty" => Ok(Mapping::NonEmpty(Box::new(compile(arg, at)?))),
        "@omit" => {
            let m = obj(arg, at, "@omit", "{value, keys: [...]}")?;
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@omit needs a `value`"))?;
            let keys = match m.get("keys") {
                Some(Value::Array(k)) if k.iter().all(Value::is_string) => k
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => return Err(err(&join(at, "keys"), "must be a list of key names")),
            };
            Ok(Mapping::Omit {
                value: Box::new(compile(value, &join(at, "value"))?),
                keys,
            })
        }
        "@liquid" => Err(err(
            at,
            "@liquid is not supported by Sluice; use @template, @if and @case",
        )),
        other => Err(err(
            at,
            format!(
                "unknown directive {other} (known: {})",
                DIRECTIVES.join(", ")
            ),
        )),
    }
}

fn template(t: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        let triple = rest[start..].starts_with("{{{");
        let open = if triple { 3 } else { 2 };
        let close_pat = if triple { "}}}" } else { "}}" };
        let Some(end) = rest[start + open..].find(close_pat) else {
            break;
        };
        if start > 0 {
            out.push(Piece::Text(rest[..start].to_string()));
        }
        let inner = rest[start + open..start + open + end].trim();
        // Template paths are looked up without `$.` stripping, as Segment's `@template` does.
        out.push(Piece::Path(Path(if inner.is_empty() {
            Vec::new()
        } else {
            split_plain(inner)
        })));
        rest = &rest[start + open + end + close_pat.len()..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    out
}

fn split_plain(p: &str) -> Vec<String> {
    Path::parse(&format!("$.{p}")).0
}

/// JavaScript's `String(v)` for template and replace coercions.
fn js_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => js_number(n),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                if x.is_null() {
                    String::new()
                } else {
                    js_string(x)
                }
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

fn js_number(n: &Number) -> String {
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i.to_string(),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
        (None, Some(f)) => f.to_string(),
        _ => n.to_string(),
    }
}

/// The mapping kit's evaluator for the directives that only pick, arrange and choose —
/// the common case, evaluated without copying; the others build values ([`eval`]).
fn eval_out<'a>(m: &'a Mapping, event: &'a Value) -> Option<Out<'a>> {
    match m {
        Mapping::Raw(v) => Some(Out::Ref(v)),
        Mapping::Object(fields) => {
            let found = fields.gather.run(event);
            let mut out = Vec::with_capacity(fields.len());
            for (i, (k, f)) in fields.iter().enumerate() {
                if let Some(v) = fields.gather.eval(&found, i, f, event) {
                    put(&mut out, k, v);
                }
            }
            Some(Out::object(out))
        }
        Mapping::Array(items) => Some(Out::array(
            items
                .iter()
                .map(|i| eval_out(i, event).unwrap_or(Out::Ref(&NULL)))
                .collect(),
        )),
        Mapping::Path(PathArg::Fixed(p)) => p.get_ref(event).map(Out::from_cow),
        Mapping::Path(p) => resolve_path(p, event)?.get_ref(event).map(Out::from_cow),
        Mapping::Literal(inner) => eval_out(inner, event),
        Mapping::If {
            blank,
            operand,
            then,
            otherwise,
            then_is_operand,
        } => {
            let x = eval_out(operand, event);
            let ok = match (&x, blank) {
                (None, _) => false,
                (Some(v), _) if v.is_null() => false,
                (Some(_), false) => true,
                // Loose `!= ""`: 0, false and [] count as blank too.
                (Some(v), true) => !v.loose_blank(),
            };
            if ok && *then_is_operand {
                x
            } else if ok {
                then.as_ref().and_then(|t| eval_out(t, event))
            } else {
                otherwise
                    .as_ref()
                    .and_then(|e| eval_out(e, event))
                    .filter(|v| !v.falsy())
            }
        }
        Mapping::ArrayPath { path, shape } => {
            let path = resolve_path(path, event)?;
            let data = path.get_ref(event)?;
            match (shape.as_deref(), data) {
                (Some(shape @ Mapping::Object(fields)), Cow::Borrowed(Value::Array(items)))
                    if !fields.is_empty() =>
                {
                    Some(Out::array(
                        items
                            .iter()
                            .map(|item| eval_out(shape, item).unwrap_or(Out::Ref(&NULL)))
                            .collect(),
                    ))
                }
                (Some(shape @ Mapping::Object(fields)), Cow::Borrowed(one @ Value::Object(_)))
                    if !fields.is_empty() =>
                {
                    Some(Out::array(vec![
                        eval_out(shape, one).unwrap_or(Out::Ref(&NULL))
                    ]))
                }
                (_, data) => Some(Out::from_cow(data)),
            }
        }
        Mapping::When {
            test,
            then,
            otherwise,
        } => {
            let truthy = eval_out(test, event).is_some_and(|v| !v.falsy());
            let branch = if truthy { then } else { otherwise };
            branch.as_ref().and_then(|b| eval_out(b, event))
        }
        Mapping::Not(inner) => Some(Out::Ref(
            if eval_out(inner, event).is_none_or(|v| v.falsy()) {
                &TRUE
            } else {
                &FALSE
            },
        )),
        Mapping::Merge { objects, right } => {
            // Every object's entries in order of precedence, lowest first; then for each
            // key the last (a stable sort keeps their order among equal keys).
            let resolved = objects.iter().filter_map(|o| eval_out(o, event));
            let mut all: Vec<(Cow<str>, Out)> = Vec::new();
            let mut add = |o: Out<'a>| {
                if let Ok(entries) = o.object_entries() {
                    all.extend(entries);
                }
            };
            if *right {
                resolved.for_each(&mut add);
            } else {
                resolved.collect::<Vec<_>>().into_iter().rev().for_each(add);
            }
            all.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out: Vec<(Cow<str>, Out)> = Vec::with_capacity(all.len());
            for (k, v) in all {
                match out.last_mut() {
                    Some(last) if last.0 == k => last.1 = v,
                    _ => out.push((k, v)),
                }
            }
            Some(Out::object(out))
        }
        Mapping::Omit { value, keys } => match eval_out(value, event)?.object_entries() {
            Ok(mut entries) => {
                entries.retain(|(k, _)| !keys.iter().any(|x| x == k));
                Some(Out::object(entries))
            }
            Err(other) => Some(other),
        },
        Mapping::Each { value, each, with } => {
            let value = eval_out(value, event)?;
            // `with` counts when it is an object.
            let on_top = with
                .as_ref()
                .and_then(|w| eval_out(w, event))
                .and_then(Out::into_entries);
            match value {
                Out::Ref(Value::Null) => None,
                // Elements in the event: `each` resolved against each without copying it.
                Out::Ref(v) => Some(Out::array(
                    elements(v)
                        .iter()
                        .filter_map(|item| each_one(each, item, on_top.as_deref()))
                        .collect(),
                )),
                // Built elements: resolved one by one and kept as values.
                built => {
                    let value = built.into_value();
                    Some(Out::owned(Value::Array(
                        elements(&value)
                            .iter()
                            .filter_map(|item| each_one(each, item, on_top.as_deref()))
                            .map(Out::into_value)
                            .collect(),
                    )))
                }
            }
        }
        _ => eval(m, event).map(Out::owned),
    }
}

/// `@map`'s elements: a list's items, or the value itself.
/// `entries.push((key, value))`, written in place: a pushed tuple is assembled on the
/// stack in 8-byte stores and copied 16 bytes at a time, and that read stalls on store
/// forwarding (a sixth of the evaluator's time in perf).
#[inline(always)]
pub(crate) fn put<'a>(entries: &mut Vec<(Cow<'a, str>, Out<'a>)>, key: &'a str, value: Out<'a>) {
    entries.reserve(1);
    let len = entries.len();
    let slot = entries.spare_capacity_mut()[0].as_mut_ptr();
    // SAFETY: `reserve(1)` made room for one more element; `slot` points at it. Both
    // fields are written before the length grows to include it.
    unsafe {
        std::ptr::addr_of_mut!((*slot).0).write(Cow::Borrowed(key));
        std::ptr::addr_of_mut!((*slot).1).write(value);
        entries.set_len(len + 1);
    }
}

fn elements(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        one => std::slice::from_ref(one),
    }
}

/// `@map`'s `each` resolved against one element, with `top` on top of object results.
fn each_one<'a>(
    each: &'a Mapping,
    item: &'a Value,
    top: Option<&[(Cow<'a, str>, Out<'a>)]>,
) -> Option<Out<'a>> {
    let v = eval_out(each, item)?;
    Some(match top {
        Some(top) => merged(v, top),
        None => v,
    })
}

/// `v` with the `top` entries on top (their keys win) when it is an object, else `v`.
fn merged<'a>(v: Out<'a>, top: &[(Cow<'a, str>, Out<'a>)]) -> Out<'a> {
    let mut entries = match v.object_entries() {
        Ok(entries) => entries,
        Err(v) => return v,
    };
    for (k, x) in top {
        match entries.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = x.clone(),
            None => entries.push((k.clone(), x.clone())),
        }
    }
    Out::object(entries)
}

fn eval(m: &Mapping, event: &Value) -> Option<Value> {
    match m {
        Mapping::Raw(_)
        | Mapping::Object(_)
        | Mapping::Array(_)
        | Mapping::Path(_)
        | Mapping::Literal(_)
        | Mapping::If { .. }
        | Mapping::ArrayPath { .. }
        | Mapping::Each { .. }
        | Mapping::Merge { .. }
        | Mapping::Omit { .. }
        | Mapping::When { .. }
        | Mapping::Not(_) => eval_out(m, event).map(Out::into_value),
        Mapping::Template(pieces) => {
            let mut s = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => s.push_str(t),
                    Piece::Path(path) => match path.get_ref(event).as_deref() {
                        None | Some(Value::Null) => {}
                        Some(v) => s.push_str(&js_string(v)),
                    },
                }
            }
            Some(Value::String(s))
        }
        Mapping::Case { upper, value } => {
            let v = eval(value, event)?;
            if falsy(&v) {
                return None;
            }
            Some(match v {
                Value::String(s) => Value::String(if *upper {
                    s.to_uppercase()
                } else {
                    s.to_lowercase()
                }),
                other => other,
            })
        }
        Mapping::Replace {
            value,
            rules,
            global,
            ignore_case,
        } => {
            let v = eval(value, event)?;
            let mut s = match &v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => js_string(&v),
                _ => String::new(),
            };
            for (pat, rep) in rules {
                s = replace(&s, pat, rep, *global, *ignore_case);
            }
            Some(Value::String(s))
        }
        Mapping::Transform { apply, mapping } => {
            let applied = eval(apply, event).unwrap_or(Value::Object(Map::new()));
            eval(mapping, &applied)
        }
        Mapping::Flatten {
            value,
            separator,
            omit_arrays,
        } => {
            let v = eval(value, event)?;
            let mut out = Map::new();
            flatten(&v, "", separator, *omit_arrays, &mut out);
            Some(Value::Object(out))
        }
        Mapping::Json { encode, value } => {
            let v = eval(value, event)?;
            if *encode {
                Some(Value::String(serde_json::to_string(&v).unwrap_or_default()))
            } else {
                match &v {
                    Value::String(s) => Some(serde_json::from_str(s).unwrap_or(v)),
                    _ => Some(v),
                }
            }
        }
        Mapping::Lookup {
            value,
            table,
            default,
        } => {
            let key = match eval(value, event) {
                Some(Value::String(s)) => Some(s),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(js_string(&v)),
                _ => None,
            };
            match key.and_then(|k| table.iter().find(|(t, _)| *t == k)) {
                Some((_, m)) => eval(m, event),
                None => default.as_ref().and_then(|d| eval(d, event)),
            }
        }
        Mapping::Trim(inner) => match eval(inner, event)? {
            Value::String(s) => Some(Value::String(s.trim().to_string())),
            other => Some(other),
        },
        Mapping::TruncateIp(inner) => match eval(inner, event)? {
            Value::String(s) => s.parse::<std::net::Ipv4Addr>().ok().map(|ip| {
                let o = ip.octets();
                Value::String(format!("{}.{}.{}.0", o[0], o[1], o[2]))
            }),
            _ => None,
        },
        Mapping::NonEmpty(inner) => match eval(inner, event)? {
            Value::Object(m) if m.is_empty() => None,
            Value::Array(a) if a.is_empty() => None,
            Value::String(s) if s.is_empty() => None,
            other => Some(other),
        },
        Mapping::ExcludeWhenNull(inner) => match eval(inner, event)? {
            Value::Null => None,
            Value::Object(m) => Some(Value::Object(drop_nulls(m))),
            other => Some(other),
        },
    }
}

fn drop_nulls(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::Object(inner) => (k, Value::Object(drop_nulls(inner))),
            other => (k, other),
        })
        .collect()
}

fn resolve_path<'a>(p: &'a PathArg, event: &Value) -> Option<Cow<'a, Path>> {
    match p {
        PathArg::Fixed(path) => Some(Cow::Borrowed(path)),
        PathArg::Dynamic(m) => match eval(m, event)? {
            Value::String(s) => Some(Cow::Owned(Path::parse(&s))),
            _ => None,
        },
    }
}

/// JavaScript's `v == ""`.
fn loose_eq_empty_string(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        Value::Array(a) => {
            a.is_empty() || (a.len() == 1 && loose_eq_empty_string(&a[0]) && !a[0].is_array())
        }
        _ => false,
    }
}

fn replace(s: &str, pat: &str, rep: &str, global: bool, ignore_case: bool) -> String {
    if !ignore_case {
        return if global {
            s.replace(pat, rep)
        } else {
            s.replacen(pat, rep, 1)
        };
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    while let Some((start, end)) = find_ignoring_case(s, last, pat) {
        out.push_str(&s[last..start]);
        out.push_str(rep);
        last = end;
        if !global {
            break;
        }
    }
    out.push_str(&s[last..]);
    out
}

/// The first match of `pat` in `hay[from..]`, comparing characters case-insensitively one
/// to one; byte positions always fall on character boundaries of `hay`.
fn find_ignoring_case(hay: &str, from: usize, pat: &str) -> Option<(usize, usize)> {
    for (i, _) in hay[from..].char_indices() {
        let start = from + i;
        let mut rest = hay[start..].chars();
        let mut end = start;
        let mut matched = true;
        for pc in pat.chars() {
            match rest.next() {
                Some(hc) if hc == pc || hc.to_lowercase().eq(pc.to_lowercase()) => {
                    end += hc.len_utf8();
                }
                _ => {
                    matched = false;
                    break;
                }
            }
        }
        if matched {
            return Some((start, end));
        }
    }
    None
}

fn flatten(v: &Value, prefix: &str, sep: &str, omit_arrays: bool, out: &mut Map<String, Value>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}{sep}{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                flatten(val, &key(k), sep, omit_arrays, out);
            }
        }
        Value::Array(a) if !omit_arrays => {
            for (i, val) in a.iter().enumerate() {
                flatten(val, &key(&i.to_string()), sep, omit_arrays, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(mapping: Value, event: Value) -> Option<Value> {
        Mapping::compile(&mapping)
            .unwrap_or_else(|e| panic!("{mapping}: {e}"))
            .eval(&event)
    }

    #[test]
    fn out_objects_serialise_with_sorted_keys() {
        let v = json!({"z": 1});
        let out = Out::object(vec![
            (Cow::Borrowed("b"), Out::Ref(&v)),
            (
                Cow::Owned("a".into()),
                Out::array(vec![Out::owned(json!("x"))]),
            ),
        ]);
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"a":["x"],"b":{"z":1}}"#
        );
        assert_eq!(out.into_value(), json!({"a": ["x"], "b": {"z": 1}}));
    }

    #[test]
    fn the_reference_worked_example() {
        let mapping = json!({"id": {"@path": "$.userId"}, "nm": {"@template": "{{traits.first}} {{traits.last}}"},
            "plan": {"@case": {"operator": "upper", "value": {"@path": "$.traits.plan"}}},
            "skus": {"@arrayPath": ["$.properties.products", {"s": {"@path": "$.sku"}}]},
            "gone": {"@path": "$.nope"}});
        let event = json!({"userId": "u1", "traits": {"first": "A", "plan": "pro"},
            "properties": {"products": [{"sku": "x"}, {"sku": "y"}]}});
        assert_eq!(
            run(mapping, event),
            Some(json!({"id": "u1", "nm": "A ", "plan": "PRO", "skus": [{"s": "x"}, {"s": "y"}]}))
        );
    }

    #[test]
    fn paths() {
        let e = json!({"a": {"b": [10, {"c": "d"}], "x": null, "z": 0, "k.y": 1}, "s": "hey"});
        for (p, want) in [
            ("$.a.b[0]", Some(json!(10))),
            ("$.a.b[1].c", Some(json!("d"))),
            ("a.b.1.c", Some(json!("d"))),
            ("$.a['k.y']", Some(json!(1))),
            ("$.a[\"k.y\"]", Some(json!(1))),
            ("$.a.x.y", Some(json!(null))),
            ("$.a.z.y", Some(json!(0))),
            ("$.a.missing.y", None),
            ("$.s.1", Some(json!("e"))),
            ("", Some(e.clone())),
            (".", Some(e.clone())),
        ] {
            assert_eq!(Path::parse(p).get_ref(&e).map(Cow::into_owned), want, "{p}");
        }
        assert_eq!(
            run(json!({"@path": "$."}), json!({"a": 1})),
            Some(json!({"a": 1}))
        );
    }

    #[test]
    fn undefined_removes_keys_and_null_stays() {
        let e = json!({"traits": {"email": null}});
        assert_eq!(
            run(
                json!({"email": {"@path": "$.traits.email"}, "name": {"@path": "$.traits.name"}, "n": null}),
                e
            ),
            Some(json!({"email": null, "n": null}))
        );
    }

    #[test]
    fn if_exists_blank_and_else_truthiness() {
        let e = json!({"traits": {"email": "a@x", "empty": "", "zero": 0}, "context": {"traits": {"email": "c@x"}}});
        let coalesce = |p: &str| json!({"@if": {"exists": {"@path": p}, "then": {"@path": p}, "else": {"@path": "$.context.traits.email"}}});
        assert_eq!(
            run(coalesce("$.traits.email"), e.clone()),
            Some(json!("a@x"))
        );
        assert_eq!(
            run(coalesce("$.traits.none"), e.clone()),
            Some(json!("c@x"))
        );
        assert_eq!(
            run(
                json!({"@if": {"exists": {"@path": "$.traits.empty"}, "then": "yes"}}),
                e.clone()
            ),
            Some(json!("yes"))
        );
        assert_eq!(
            run(
                json!({"@if": {"blank": {"@path": "$.traits.empty"}, "then": "yes", "else": "no"}}),
                e.clone()
            ),
            Some(json!("no"))
        );
        assert_eq!(
            run(
                json!({"@if": {"blank": {"@path": "$.traits.zero"}, "then": "yes", "else": "no"}}),
                e.clone()
            ),
            Some(json!("no"))
        );
        assert_eq!(
            run(
                json!({"@if": {"blank": {"@path": "$.traits.email"}, "then": "yes"}}),
                e.clone()
            ),
            Some(json!("yes"))
        );
        // else with a falsy value omits the key; no branch omits it.
        assert_eq!(
            run(
                json!({"@if": {"exists": {"@path": "$.nope"}, "then": 1, "else": false}}),
                e.clone()
            ),
            None
        );
        assert_eq!(
            run(
                json!({"@if": {"exists": {"@path": "$.nope"}, "then": 1}}),
                e.clone()
            ),
            None
        );
    }

    #[test]
    fn template_coercions() {
        let e = json!({"n": 0, "f": 1.5, "o": {"a": 1}, "l": ["a", "b"], "nul": null, "t": true, "big": 3.0});
        assert_eq!(
            run(
                json!({"@template": "{{n}}|{{f}}|{{o}}|{{l}}|{{nul}}|{{missing}}|{{{t}}}|{{big}}"}),
                e
            ),
            Some(json!("0|1.5|[object Object]|a,b|||true|3"))
        );
    }

    #[test]
    fn literal_case_replace_json() {
        let e = json!({"p": "Pro Plan", "n": 12345, "s": "{\"a\":1}", "bad": "{nope"});
        assert_eq!(
            run(json!({"@literal": {"x": {"@path": "$.p"}}}), e.clone()),
            Some(json!({"x": "Pro Plan"}))
        );
        assert_eq!(
            run(
                json!({"@case": {"operator": "lower", "value": {"@path": "$.p"}}}),
                e.clone()
            ),
            Some(json!("pro plan"))
        );
        assert_eq!(
            run(
                json!({"@case": {"operator": "lower", "value": {"@path": "$.n"}}}),
                e.clone()
            ),
            Some(json!(12345))
        );
        assert_eq!(
            run(
                json!({"@replace": {"value": {"@path": "$.p"}, "pattern": " ", "replacement": "_"}}),
                e.clone()
            ),
            Some(json!("Pro_Plan"))
        );
        assert_eq!(
            run(
                json!({"@replace": {"value": {"@path": "$.p"}, "pattern": "p", "replacement": "b", "ignorecase": true, "global": false}}),
                e.clone()
            ),
            Some(json!("bro Plan"))
        );
        assert_eq!(
            run(
                json!({"@replace": {"value": {"@path": "$.n"}, "pattern": "23", "pattern2": "5", "replacement2": "!"}}),
                e.clone()
            ),
            Some(json!("14!"))
        );
        assert_eq!(
            run(
                json!({"@replace": {"value": {"@path": "$.missing"}, "pattern": "x"}}),
                e.clone()
            ),
            None
        );
        assert_eq!(
            run(
                json!({"@json": {"mode": "decode", "value": {"@path": "$.s"}}}),
                e.clone()
            ),
            Some(json!({"a": 1}))
        );
        assert_eq!(
            run(
                json!({"@json": {"mode": "decode", "value": {"@path": "$.bad"}}}),
                e.clone()
            ),
            Some(json!("{nope"))
        );
        assert_eq!(
            run(
                json!({"@json": {"mode": "encode", "value": {"a": [1, "x"]}}}),
                e.clone()
            ),
            Some(json!("{\"a\":[1,\"x\"]}"))
        );
        assert_eq!(
            run(
                json!({"@json": {"mode": "encode", "value": {"@path": "$.missing"}}}),
                e
            ),
            None
        );
    }

    #[test]
    fn array_path_merge_transform_flatten_exclude() {
        let e = json!({"properties": {"products": [{"sku": "a", "q": 1}, {"sku": "b"}], "one": {"sku": "c"}},
            "traits": {"a": 1, "b": null, "n": {"x": null, "y": 2}}, "context": {"traits": {"a": 9, "c": 3}}});
        assert_eq!(
            run(
                json!({"@arrayPath": ["$.properties.one", {"s": {"@path": "$.sku"}}]}),
                e.clone()
            ),
            Some(json!([{"s": "c"}])),
            "a single object becomes a one-element array"
        );
        assert_eq!(
            run(json!({"@arrayPath": ["$.properties.products"]}), e.clone()),
            Some(json!([{"sku": "a", "q": 1}, {"sku": "b"}]))
        );
        assert_eq!(
            run(
                json!({"@arrayPath": ["$.missing", {"s": {"@path": "$.sku"}}]}),
                e.clone()
            ),
            None
        );
        assert_eq!(
            run(
                json!({"@merge": {"objects": [{"@path": "$.traits"}, {"@path": "$.context.traits"}], "direction": "right"}}),
                e.clone()
            ),
            Some(json!({"a": 9, "b": null, "n": {"x": null, "y": 2}, "c": 3}))
        );
        assert_eq!(
            run(
                json!({"@merge": {"objects": [{"@path": "$.traits"}, {"@path": "$.context.traits"}, {"@path": "$.nope"}], "direction": "left"}}),
                e.clone()
            ),
            Some(json!({"a": 1, "c": 3, "b": null, "n": {"x": null, "y": 2}}))
        );
        assert_eq!(
            run(
                json!({"@transform": {"apply": {"x": {"@path": "$.traits.n"}}, "mapping": {"y": {"@path": "$.x.y"}}}}),
                e.clone()
            ),
            Some(json!({"y": 2}))
        );
        assert_eq!(
            run(
                json!({"@flatten": {"value": {"@path": "$.properties"}, "separator": "."}}),
                e.clone()
            ),
            Some(
                json!({"products.0.sku": "a", "products.0.q": 1, "products.1.sku": "b", "one.sku": "c"})
            )
        );
        assert_eq!(
            run(
                json!({"@flatten": {"value": {"@path": "$.properties"}, "separator": "_", "omitArrays": true}}),
                e.clone()
            ),
            Some(json!({"products": [{"sku": "a", "q": 1}, {"sku": "b"}], "one_sku": "c"}))
        );
        assert_eq!(
            run(
                json!({"@flatten": {"value": 5, "separator": "."}}),
                e.clone()
            ),
            Some(json!({"": 5}))
        );
        assert_eq!(
            run(
                json!({"@excludeWhenNull": {"@path": "$.traits.b"}}),
                e.clone()
            ),
            None
        );
        assert_eq!(
            run(json!({"@excludeWhenNull": {"@path": "$.traits"}}), e),
            Some(json!({"a": 1, "n": {"y": 2}}))
        );
    }

    #[test]
    fn sluice_extensions() {
        let e = json!({"event": "Hit Search", "n": 2, "context": {"ip": "203.0.113.77", "ip6": "2001:db8::1"},
            "products": [{"product_id": "p1", "quantity": 2}, {"sku": "x"}, {"product_id": 3}]});
        let lookup = |v: Value| json!({"@lookup": {"value": v, "table": {"Hit Search": "search", "2": "two"}, "default": "custom"}});
        assert_eq!(
            run(lookup(json!({"@path": "$.event"})), e.clone()),
            Some(json!("search"))
        );
        assert_eq!(
            run(lookup(json!({"@path": "$.n"})), e.clone()),
            Some(json!("two"))
        );
        assert_eq!(
            run(lookup(json!("Other")), e.clone()),
            Some(json!("custom"))
        );
        assert_eq!(
            run(
                json!({"@lookup": {"value": {"@path": "$.nope"}, "table": {"a": 1}}}),
                e.clone()
            ),
            None
        );
        assert_eq!(
            run(
                json!({"@map": {"value": {"@path": "$.products"}, "each": {"@path": "$.product_id"}}}),
                e.clone()
            ),
            Some(json!(["p1", 3]))
        );
        let qty = json!({"@map": {"value": {"@path": "$.products"}, "each": {"@if": {"exists": {"@path": "$.product_id"},
            "then": {"@if": {"exists": {"@path": "$.quantity"}, "then": {"@path": "$.quantity"}, "else": 1}}}}}});
        assert_eq!(run(qty, e.clone()), Some(json!([2, 1])));
        assert_eq!(
            run(json!({"@truncateIp": {"@path": "$.context.ip"}}), e.clone()),
            Some(json!("203.0.113.0"))
        );
        assert_eq!(
            run(
                json!({"@truncateIp": {"@path": "$.context.ip6"}}),
                e.clone()
            ),
            None
        );
        assert_eq!(
            run(json!({"@nonEmpty": {"a": {"@path": "$.nope"}}}), e.clone()),
            None
        );
        assert_eq!(
            run(json!({"@nonEmpty": {"a": {"@path": "$.n"}}}), e.clone()),
            Some(json!({"a": 2}))
        );
        let bad = Mapping::compile(&json!({"@lookup": {"value": 1, "table": [1]}})).unwrap_err();
        assert_eq!(bad.at, "@lookup.table");
    }

    #[test]
    fn when_not_trim_and_map_with() {
        let e = json!({"flag": true, "off": false, "s": "  Video Played ", "p": [{"a": 1, "url": "x"}, {"a": 2}], "url": "page"});
        assert_eq!(
            run(
                json!({"@when": {"true": {"@path": "$.flag"}, "then": "y", "else": "n"}}),
                e.clone()
            ),
            Some(json!("y"))
        );
        assert_eq!(
            run(
                json!({"@when": {"true": {"@path": "$.off"}, "then": "y", "else": "n"}}),
                e.clone()
            ),
            Some(json!("n"))
        );
        assert_eq!(
            run(
                json!({"@when": {"true": {"@path": "$.nope"}, "then": "y"}}),
                e.clone()
            ),
            None
        );
        assert_eq!(
            run(json!({"@not": {"@path": "$.off"}}), e.clone()),
            Some(json!(true))
        );
        assert_eq!(
            run(json!({"@not": {"@path": "$.flag"}}), e.clone()),
            Some(json!(false))
        );
        assert_eq!(
            run(json!({"@trim": {"@path": "$.s"}}), e.clone()),
            Some(json!("Video Played"))
        );
        assert_eq!(
            run(
                json!({"@map": {"value": {"@path": "$.p"}, "each": {"a": {"@path": "$.a"}, "url": {"@path": "$.url"}}, "with": {"url": {"@path": "$.url"}}}}),
                e
            ),
            Some(json!([{"a": 1, "url": "page"}, {"a": 2, "url": "page"}]))
        );
    }

    #[test]
    fn omit_drops_listed_keys() {
        let e = json!({"traits": {"email": "a@x", "city": "Oslo", "plan": "pro"}});
        assert_eq!(
            run(
                json!({"@omit": {"value": {"@path": "$.traits"}, "keys": ["email", "city"]}}),
                e.clone()
            ),
            Some(json!({"plan": "pro"}))
        );
        assert_eq!(
            run(
                json!({"@omit": {"value": {"@path": "$.nope"}, "keys": ["a"]}}),
                e
            ),
            None
        );
        let bad = Mapping::compile(&json!({"@omit": {"value": 1, "keys": "a"}})).unwrap_err();
        assert_eq!(bad.at, "@omit.keys");
    }

    #[test]
    fn case_insensitive_replace_is_per_character() {
        assert_eq!(replace("ẞaȺbẞ", "ȺB", "-", true, true), "ẞa-ẞ");
        assert_eq!(replace("ÄÖü", "ö", "o", true, true), "Äoü");
        assert_eq!(replace("aAa", "A", "b", false, true), "bAa");
        assert_eq!(replace("aAa", "A", "b", true, false), "aba");
    }

    #[test]
    fn compile_errors_name_the_place() {
        for (m, at, msg) in [
            (
                json!({"a": {"@path": "$.x", "@template": "y"}}),
                "a",
                "exactly one",
            ),
            (json!({"a": {"@path": "$.x", "other": 1}}), "a", "mixed"),
            (
                json!({"a": {"b": {"@nope": 1}}}),
                "a.b.@nope",
                "unknown directive",
            ),
            (
                json!({"a": {"@liquid": "{{x}}"}}),
                "a.@liquid",
                "not supported",
            ),
            (json!({"a": {"@if": {"then": 1}}}), "a.@if", "exists"),
            (
                json!({"a": {"@case": {"operator": "title", "value": 1}}}),
                "a.@case.operator",
                "lower",
            ),
            (
                json!({"a": {"@replace": {"value": 1, "pattern": "01234567890"}}}),
                "a.@replace.pattern",
                "1 to 10",
            ),
            (
                json!({"a": {"@merge": {"objects": []}}}),
                "a.@merge.direction",
                "left",
            ),
            (json!({"a": {"@path": 5}}), "a.@path", "path string"),
            (
                json!({"a": [{"@json": {"mode": "x", "value": 1}}]}),
                "a[0].@json.mode",
                "encode",
            ),
        ] {
            let e = Mapping::compile(&m).unwrap_err();
            assert_eq!(e.at, at, "{m}: {e}");
            assert!(e.message.contains(msg), "{m}: {e}");
        }
        // `_metadata` beside a directive is allowed.
        assert!(Mapping::compile(&json!({"@path": "$.x", "_metadata": {"label": "X"}})).is_ok());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[@$.a-z\\[\\]{}' ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("@path".to_string()),
                        Just("@if".to_string()),
                        Just("@template".to_string()),
                        Just("@arrayPath".to_string()),
                        Just("@merge".to_string()),
                        Just("@when".to_string()),
                        Just("@not".to_string()),
                        Just("@map".to_string()),
                        Just("@omit".to_string()),
                        Just("exists".to_string()),
                        Just("value".to_string()),
                        Just("each".to_string()),
                        Just("true".to_string()),
                        Just("objects".to_string()),
                        Just("then".to_string()),
                        Just("else".to_string()),
                        "[a-z]{1,3}",
                    ],
                    inner,
                    0..3
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Values for `@map`'s fixtures: lists of small objects, objects, scalars, null.
    fn element() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0..3i32).prop_map(Value::from),
            prop_oneof![Just(""), Just("x")].prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("a|url|b", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Paths into `element()`-made events: shared and distinct first keys, deeper keys,
    /// list indexes and string characters, missing keys.
    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![Just("a"), Just("url"), Just("b"), Just("0"), Just("z")],
            1..4,
        )
        .prop_map(|keys| format!("$.{}", keys.join(".")))
    }

    proptest! {
        /// An object's fixed paths, resolved together in one pass over the event's
        /// entries (`Gather`), give for each field what `Path::get_ref` gives alone —
        /// for any root (object or not) and any intermediate (falsy, list, string,
        /// missing).
        #[test]
        fn gathered_paths_resolve_as_alone(
            root in prop_oneof![
                prop::collection::btree_map("a|url|b|0", element(), 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                element(),
            ],
            paths in prop::collection::vec(path(), 0..7),
            shapes in prop::collection::vec(any::<bool>(), 7),
        ) {
            // Some fields are not paths, so gathered and plain ones interleave.
            let mut fields = serde_json::Map::new();
            for (i, p) in paths.iter().enumerate() {
                let m = if shapes[i] { serde_json::json!({"@path": p}) } else { serde_json::json!({"@literal": i}) };
                fields.insert(format!("f{i}"), m);
            }
            let compiled = Mapping::compile(&Value::Object(fields.clone())).unwrap();
            let Some(Value::Object(got)) = compiled.eval_out(&root).map(Out::into_value) else {
                panic!("an object mapping gives an object");
            };
            let mut want = Map::new();
            for (i, p) in paths.iter().enumerate() {
                let v = if shapes[i] {
                    Path::parse(p).get_ref(&root).map(Cow::into_owned)
                } else {
                    Some(Value::from(i))
                };
                if let Some(v) = v {
                    want.insert(format!("f{i}"), v);
                }
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn compiling_and_evaluating_never_panic(mapping in json(), event in json()) {
            if let Ok(m) = Mapping::compile(&mapping) {
                let _ = m.eval(&event);
            }
        }

        /// `@merge` and `@omit` over borrowed entries give what they gave on values.
        #[test]
        fn merge_and_omit_resolve_as_on_values(
            event in prop::collection::btree_map("p|q|r|a", element(), 0..4),
            picks in prop::collection::vec(0..4usize, 0..4),
            right in any::<bool>(),
            omit in prop::collection::vec(prop_oneof![Just("a"), Just("url"), Just("b")], 0..3),
        ) {
            let event = Value::Object(event.into_iter().collect());
            let choices = [
                serde_json::json!({"@path": "$.p"}),
                serde_json::json!({"@path": "$.q"}),
                serde_json::json!({"a": {"@path": "$.r"}, "url": "k"}),
                serde_json::json!({"@path": "$.nope"}),
            ];
            let objects: Vec<Value> = picks.iter().map(|i| choices[*i].clone()).collect();
            let direction = if right { "right" } else { "left" };
            let merge = Mapping::compile(
                &serde_json::json!({"@merge": {"objects": objects, "direction": direction}}),
            )
            .unwrap();
            // On values: each object's keys inserted in order of precedence.
            let mut resolved: Vec<Value> = objects
                .iter()
                .filter_map(|o| Mapping::compile(o).unwrap().eval(&event))
                .collect();
            if !right {
                resolved.reverse();
            }
            let mut want = Map::new();
            for o in &resolved {
                if let Value::Object(m) = o {
                    for (k, v) in m {
                        want.insert(k.clone(), v.clone());
                    }
                }
            }
            prop_assert_eq!(merge.eval(&event), Some(Value::Object(want)));
            for value in &choices {
                let m = Mapping::compile(
                    &serde_json::json!({"@omit": {"value": value, "keys": omit}}),
                )
                .unwrap();
                let want = Mapping::compile(value).unwrap().eval(&event).map(|v| match v {
                    Value::Object(mut o) => {
                        for k in &omit {
                            o.remove(*k);
                        }
                        Value::Object(o)
                    }
                    other => other,
                });
                prop_assert_eq!(m.eval(&event), want);
            }
        }

        /// `@map` (borrowed elements or built ones) gives what it gave on values,
        /// for every shape of `value` (list, one element, null, missing, built), of `each`
        /// and of `with` (object or not).
        #[test]
        fn map_resolves_as_on_values(
            event in prop::collection::btree_map("p|url|a", element(), 0..4),
            value in prop_oneof![Just(serde_json::json!({"@path": "$.p"})), Just(serde_json::json!({"@path": "$.nope"})),
                Just(serde_json::json!([{"a": 1}, {"@path": "$.url"}]))],
            each in prop_oneof![Just(serde_json::json!({"@path": "$.a"})), Just(serde_json::json!({"a": {"@path": "$.a"}, "url": {"@path": "$.url"}})),
                Just(serde_json::json!("k")), Just(serde_json::json!({"@path": "$"}))],
            with in prop_oneof![Just(None), Just(Some(serde_json::json!({"url": {"@path": "$.url"}}))),
                Just(Some(serde_json::json!({"@path": "$.url"}))), Just(Some(serde_json::json!({"@path": "$.p"})))],
        ) {
            let event = Value::Object(event.into_iter().collect());
            let mut spec = serde_json::json!({"value": value, "each": each});
            if let Some(w) = &with {
                spec["with"] = w.clone();
            }
            let m = Mapping::compile(&serde_json::json!({"@map": spec})).unwrap();
            let Mapping::Each { value, each, with } = &m else { unreachable!() };
            // On values, as `@map` was evaluated before it resolved borrowed elements.
            let on_values = value.eval(&event).and_then(|v| {
                let items = match v {
                    Value::Array(a) => a,
                    Value::Null => return None,
                    one => vec![one],
                };
                let on_top = with.as_ref().and_then(|w| w.eval(&event));
                Some(Value::Array(
                    items
                        .iter()
                        .filter_map(|item| each.eval(item))
                        .map(|v| match (v, &on_top) {
                            (Value::Object(mut m), Some(Value::Object(top))) => {
                                for (k, x) in top {
                                    m.insert(k.clone(), x.clone());
                                }
                                Value::Object(m)
                            }
                            (v, _) => v,
                        })
                        .collect(),
                ))
            });
            prop_assert_eq!(m.eval(&event), on_values);
        }

        /// The borrowed form serialises to the same bytes as the built value.
        #[test]
        fn out_serialises_as_its_value(mapping in json(), event in json()) {
            if let Ok(m) = Mapping::compile(&mapping) {
                let out = m.eval_out(&event);
                let bytes = serde_json::to_vec(&out).unwrap();
                let value = out.map(Out::into_value);
                prop_assert_eq!(&value, &m.eval(&event));
                prop_assert_eq!(bytes, serde_json::to_vec(&value).unwrap());
            }
        }

        #[test]
        fn raw_values_without_directives_come_back_unchanged(v in json()) {
            let has_directive = v.to_string().contains("\"@");
            if !has_directive {
                prop_assert_eq!(Mapping::compile(&v).unwrap().eval(&serde_json::json!({})), Some(v));
            }
        }
    }
}
