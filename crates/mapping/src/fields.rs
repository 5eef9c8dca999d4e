//! Action fields: their declared types, and what happens to a mapped payload before it
//! is sent (segment-compat 3.4 steps 4–5, destinations.md section 0): cleaning (empty
//! values removed), coercion to the declared type (`"19.90"` → 19.9 for a number,
//! `50331` → `"50331"` for a string, `"true"` → true, a scalar → `[scalar]` for a
//! `multiple` field), unknown keys dropped, and required fields checked. A payload that
//! cannot be fixed is refused with a [`ValidationError`] naming the field — a permanent
//! failure: nothing is sent, nothing is retried.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use crate::kit::{fixed, put, Found, Gather, Mapping, Out, Path, PathArg, FALSE, NULL, TRUE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Text,
    Password,
    Number,
    Integer,
    Boolean,
    Datetime,
    Object,
}

/// One field of an action (or a property of an object field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default)]
    pub required: bool,
    /// An array of `ty`.
    #[serde(default)]
    pub multiple: bool,
    #[serde(default)]
    pub allow_null: bool,
    /// With `required`: when the value is missing (or an empty list), the action is
    /// skipped — nothing sent, not a failure (for partner rules like "skipped when the
    /// product has no id").
    #[serde(default)]
    pub skip_when_missing: bool,
    /// Object fields: the known properties (then other keys are dropped unless
    /// `additional_properties`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<std::collections::BTreeMap<String, FieldSpec>>,
    #[serde(default = "yes")]
    pub additional_properties: bool,
    /// Text fields: a format the value must have (Segment's `format`), else the event is
    /// refused for the action naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// The values the field may take (Segment's `choices`, an enum in its schema): any
    /// other refuses the event for the action, naming the field. The console offers them
    /// as a picker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Value>>,
}

/// A text field's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// An absolute URI of RFC 3986's characters (`scheme:` then unreserved, reserved and
    /// `%XX` only: no spaces, no characters outside ASCII), as ajv-formats' `uri`.
    Uri,
    /// An email address as ajv-formats' full `email` pattern reads one (case-insensitive
    /// ASCII local part and dotted host names of letters, digits and hyphens).
    Email,
}

/// Whether `s` is an email address as [`Format::Email`] says.
fn is_email(s: &str) -> bool {
    static EMAIL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i-u)^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$",
        )
        .expect("a fixed pattern compiles")
    });
    EMAIL.is_match(s)
}

/// Whether `s` is a URI as [`Format::Uri`] says.
fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut sc = scheme.chars();
    if !sc.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !sc.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return false;
    }
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if i + 2 >= b.len() || !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        let allowed = c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?#[]".contains(&c);
        if !allowed {
            return false;
        }
        i += 1;
    }
    true
}

fn yes() -> bool {
    true
}

impl FieldSpec {
    pub fn of(ty: FieldType) -> FieldSpec {
        FieldSpec {
            ty,
            required: false,
            multiple: false,
            allow_null: false,
            skip_when_missing: false,
            properties: None,
            additional_properties: true,
            format: None,
            choices: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
    /// The field asks for the action to be skipped rather than failed.
    pub skip: bool,
}

/// A validation error on the way: boxed, so that results stay two words wide and travel
/// in registers (see [`Out`]).
type Failed = Box<ValidationError>;

fn invalid(field: &str, message: impl Into<String>) -> Failed {
    Box::new(ValidationError {
        field: field.to_string(),
        message: message.into(),
        skip: false,
    })
}

/// Cleans, coerces and checks a mapped payload against the fields of an action. Keys not
/// declared are dropped (the root never takes additional properties).
pub fn prepare(
    fields: &[(String, FieldSpec)],
    payload: Map<String, Value>,
) -> Result<Map<String, Value>, ValidationError> {
    match prepare_out(fields, Out::owned(Value::Object(payload)))?.into_value() {
        Value::Object(m) => Ok(m),
        _ => unreachable!("prepare_out gives an object"),
    }
}

/// [`prepare`] on the evaluator's borrowed form ([`Mapping::eval_out`]): nothing is
/// copied that is not changed. A non-object payload counts as `{}`. The result is an
/// [`Out::Object`] in the order of `fields`.
pub fn prepare_out<'a>(
    fields: &'a [(String, FieldSpec)],
    payload: Out<'a>,
) -> Result<Out<'a>, ValidationError> {
    let mut entries = Entries::of(payload.into_entries().unwrap_or_default());
    prepare_with(fields, |_, key, _| Ok(entries.take(key).map(Taken::Raw))).map_err(|e| *e)
}

/// An action's fields compiled together with its mapping, once per configuration:
/// `prepare_out(fields, mapping.eval_out(event))` without building the mapped object
/// first when the mapping is one. For each declared field the plan knows which mapping
/// gives it, so evaluation goes field by field with no key looked up, keys the fields do
/// not declare are not evaluated at all, and object fields with known properties (no
/// others) mapped by an object — or, as lists, by an `@arrayPath` with an object shape
/// (the product lists of every e-commerce action) — are evaluated and typed property by
/// property, never built only to be taken apart.
#[derive(Debug, Clone)]
pub struct TypedMapping {
    fields: Vec<(String, FieldSpec)>,
    mapping: Mapping,
    /// One step per field when the mapping is an object; otherwise the mapping is
    /// evaluated whole and prepared.
    steps: Option<Steps>,
}

/// The steps of an object's fields or properties, with their paths' first keys gathered.
#[derive(Debug, Clone)]
struct Steps {
    list: Vec<Step>,
    gather: Gather,
}

impl Steps {
    fn new(list: Vec<Step>) -> Steps {
        let gather = Gather::of(list.iter().map(|s| match &s.source {
            Source::Eval(m) => fixed(m),
            Source::Items(path, ..) => Some(path),
            _ => None,
        }));
        Steps { list, gather }
    }
}

/// Where one field (or property) comes from.
#[derive(Debug, Clone)]
struct Step {
    key: String,
    spec: FieldSpec,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// The mapping has no entry for the field.
    Missing,
    /// Evaluate, then clean and coerce.
    Eval(Mapping),
    /// An object with known properties and no others, mapped by an object: each
    /// property in turn (in the properties' order).
    Object(Steps),
    /// A list of such objects mapped by `@arrayPath` over a fixed path; when the path
    /// holds neither a list nor an object, the mapping is evaluated as usual.
    Items(Path, Steps, Mapping),
}

impl TypedMapping {
    pub fn new(fields: &[(String, FieldSpec)], mapping: &Mapping) -> TypedMapping {
        let steps = match mapping {
            Mapping::Object(entries) => Some(steps(fields.iter().map(|(k, s)| (k, s)), entries)),
            _ => None,
        };
        TypedMapping {
            fields: fields.to_vec(),
            mapping: mapping.clone(),
            steps,
        }
    }

    /// The mapped, cleaned and typed payload — an [`Out::Object`] in the order of the
    /// fields — or why the event cannot be sent.
    pub fn eval<'a>(&'a self, event: &'a Value) -> Result<Out<'a>, ValidationError> {
        let Some(steps) = &self.steps else {
            return prepare_out(
                &self.fields,
                self.mapping
                    .eval_out(event)
                    .unwrap_or(Out::Object(Box::default())),
            );
        };
        let found = steps.gather.run(event);
        prepare_with(&self.fields, |i, _, _| source(steps, &found, i, event)).map_err(|e| *e)
    }
}

fn steps<'k>(
    fields: impl Iterator<Item = (&'k String, &'k FieldSpec)>,
    entries: &[(String, Mapping)],
) -> Steps {
    Steps::new(
        fields
            .map(|(key, spec)| Step {
                key: key.clone(),
                spec: spec.clone(),
                source: match entries.iter().find(|(k, _)| k == key) {
                    None => Source::Missing,
                    Some((_, m)) => fused(spec, m),
                },
            })
            .collect(),
    )
}

fn fused(spec: &FieldSpec, mapping: &Mapping) -> Source {
    let eval = || Source::Eval(mapping.clone());
    let Some(props) = spec.properties.as_ref() else {
        return eval();
    };
    if spec.ty != FieldType::Object || spec.additional_properties {
        return eval();
    }
    match mapping {
        Mapping::Object(fields) if !spec.multiple => Source::Object(steps(props.iter(), fields)),
        Mapping::ArrayPath {
            path: PathArg::Fixed(path),
            shape: Some(shape),
        } if spec.multiple => match shape.as_ref() {
            Mapping::Object(fields) if !fields.is_empty() => {
                Source::Items(path.clone(), steps(props.iter(), fields), mapping.clone())
            }
            _ => eval(),
        },
        _ => eval(),
    }
}

/// Step `i`'s value (`found`: what its list's gather found in `event`): raw (to be
/// cleaned and coerced) or already typed; the errors of typed values name the path below
/// the step.
fn source<'a>(
    steps: &'a Steps,
    found: &Found<'a>,
    i: usize,
    event: &'a Value,
) -> Result<Option<Taken<'a>>, Failed> {
    match &steps.list[i].source {
        Source::Missing => Ok(None),
        Source::Eval(m) => Ok(steps.gather.eval(found, i, m, event).map(Taken::Raw)),
        Source::Object(props) => typed_object(props, event, false).map(|v| Some(Taken::Typed(v))),
        Source::Items(path, props, m) => {
            let data = match steps.gather.get(found, i, path) {
                Some(got) => got,
                None => path.get_ref(event),
            };
            let items = match data {
                None => return Ok(None),
                Some(Cow::Borrowed(Value::Array(items))) => items.as_slice(),
                Some(Cow::Borrowed(one @ Value::Object(_))) => std::slice::from_ref(one),
                Some(_) => return Ok(m.eval_out(event).map(Taken::Raw)),
            };
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(typed_object(props, item, true).map_err(|e| e.under(&format!("[{i}]")))?);
            }
            Ok(Some(Taken::Typed(Out::array(out))))
        }
    }
}

/// What the object branch of [`coerce_one`] gives for the object that the properties'
/// steps map to (`item`: as an element of a list).
fn typed_object<'a>(props: &'a Steps, event: &'a Value, item: bool) -> Result<Out<'a>, Failed> {
    let found = props.gather.run(event);
    let mut out = Vec::with_capacity(props.list.len());
    for (i, p) in props.list.iter().enumerate() {
        let value = match source(props, &found, i, event).map_err(|e| e.under(&p.key))? {
            Some(Taken::Typed(v)) => {
                put(&mut out, &p.key, v);
                continue;
            }
            Some(Taken::Raw(v)) => Some(v),
            None => None,
        };
        if let Some(v) = object_property(&p.key, &p.spec, value, item)? {
            put(&mut out, &p.key, v);
        }
    }
    Ok(Out::object(out))
}

/// What [`prepare_with`] gets for a field: a value to clean and coerce, or one already
/// typed (by a fused step).
enum Taken<'a> {
    Raw(Out<'a>),
    Typed(Out<'a>),
}

/// One property of an object field: required ones must be there; `null` (unless allowed)
/// and, for non-string types, `""` are dropped. In an element of a list (`item`), `null`
/// becomes its type's empty value instead (`""`, `0`, `false`), as Segment's actions do:
/// their cleaning of empty values stops at lists, and their schema check then coerces
/// what is left.
fn object_property<'a>(
    key: &str,
    spec: &'a FieldSpec,
    value: Option<Out<'a>>,
    item: bool,
) -> Result<Option<Out<'a>>, Failed> {
    match value {
        None if spec.required => Err(invalid(key, "is required but the mapping gave no value")),
        None => Ok(None),
        Some(v) if v.is_null() && !spec.allow_null => Ok(if item { empty_of(spec) } else { None }),
        Some(v) if v.as_str() == Some("") && !is_stringy(spec.ty) => Ok(None),
        Some(v) => coerce(spec, v).map(Some).map_err(|e| e.under(key)),
    }
}

/// The index in `0..n` for which `is` holds, searched from `from` round to `from - 1`:
/// mappings list their keys in about the order the fields are declared, so a search
/// that starts after the last key found usually takes one step.
fn find(n: usize, from: usize, is: impl Fn(usize) -> bool) -> Option<usize> {
    let from = from.min(n);
    (from..n).chain(0..from).find(|&i| is(i))
}

fn prepare_with<'a>(
    fields: &'a [(String, FieldSpec)],
    mut take: impl FnMut(usize, &str, &'a FieldSpec) -> Result<Option<Taken<'a>>, Failed>,
) -> Result<Out<'a>, Failed> {
    let mut out = Vec::with_capacity(fields.len());
    for (i, (key, spec)) in fields.iter().enumerate() {
        let value = match take(i, key, spec).map_err(|e| e.under(key))? {
            None => None,
            Some(Taken::Typed(v)) => Some(v),
            Some(Taken::Raw(v)) if v.is_null() && !spec.allow_null => None,
            // Empty strings are removed at the root.
            Some(Taken::Raw(v)) if v.as_str() == Some("") => None,
            Some(Taken::Raw(v)) => Some(coerce(spec, v).map_err(|e| e.under(key))?),
        };
        // A list that came out empty counts as missing for a field that skips its action
        // when missing (a partner's "no products, nothing to send"). Otherwise an empty
        // list is a value, required or not, as in Segment's schema check.
        let value = value.filter(|v| {
            !(spec.skip_when_missing && spec.multiple && matches!(v, Out::Array(a) if a.is_empty()))
        });
        match value {
            Some(v) => put(&mut out, key, v),
            None if spec.required => {
                let mut e = invalid(key, "is required but the mapping gave no value");
                e.skip = spec.skip_when_missing;
                return Err(e);
            }
            None => {}
        }
    }
    Ok(Out::object(out))
}

/// An object's entries, taken out by key (each at most once; keys are unique).
struct Entries<'a> {
    entries: Vec<(Cow<'a, str>, Out<'a>)>,
    taken: Vec<bool>,
    next: usize,
}

impl<'a> Entries<'a> {
    fn of(entries: Vec<(Cow<'a, str>, Out<'a>)>) -> Entries<'a> {
        let taken = vec![false; entries.len()];
        Entries {
            entries,
            taken,
            next: 0,
        }
    }

    fn take(&mut self, key: &str) -> Option<Out<'a>> {
        let i = find(self.entries.len(), self.next, |i| self.entries[i].0 == key)?;
        self.next = i + 1;
        self.taken[i] = true;
        Some(std::mem::replace(&mut self.entries[i].1, Out::Ref(&NULL)))
    }

    /// The entries not taken.
    fn rest(self) -> impl Iterator<Item = (Cow<'a, str>, Out<'a>)> {
        self.entries
            .into_iter()
            .zip(self.taken)
            .filter_map(|(e, taken)| (!taken).then_some(e))
    }
}

/// Coerces one value; errors name the path relative to it (`""`, `"[1]"`, `".lat"`),
/// which callers prefix — paths are only built when something is wrong.
fn coerce<'a>(spec: &'a FieldSpec, v: Out<'a>) -> Result<Out<'a>, Failed> {
    if v.is_null() {
        return if spec.allow_null {
            Ok(v)
        } else {
            Err(invalid("", "may not be null"))
        };
    }
    if spec.multiple {
        let items = v.into_items().unwrap_or_else(|one| vec![one]);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            // Empty strings in non-string arrays are dropped like at the root.
            if item.as_str() == Some("") && !is_stringy(spec.ty) {
                continue;
            }
            out.push(coerce_one(spec, item, true).map_err(|e| e.under(&format!("[{i}]")))?);
        }
        return Ok(Out::array(out));
    }
    coerce_one(spec, v, false)
}

impl ValidationError {
    /// The same error one level up: `parent` + this path.
    fn under(mut self: Box<Self>, parent: &str) -> Failed {
        self.field = if self.field.is_empty() || self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

fn is_stringy(t: FieldType) -> bool {
    matches!(
        t,
        FieldType::String | FieldType::Text | FieldType::Password | FieldType::Datetime
    )
}

fn kind(v: &Out) -> &'static str {
    match v {
        Out::Object(_) => "an object",
        Out::Array(_) => "a list",
        v => match v.as_value() {
            Some(Value::Null) => "null",
            Some(Value::Bool(_)) => "a boolean",
            Some(Value::Number(_)) => "a number",
            Some(Value::String(_)) => "a string",
            Some(Value::Array(_)) => "a list",
            _ => "an object",
        },
    }
}

/// `item`: the value is an element of a list (see [`object_property`]). The coerced value
/// must be one of the field's `choices`, when it has them.
fn coerce_one<'a>(spec: &'a FieldSpec, v: Out<'a>, item: bool) -> Result<Out<'a>, Failed> {
    let out = coerce_kind(spec, v, item)?;
    match (&spec.choices, out.as_value()) {
        (Some(choices), Some(value)) if !value.is_null() && !choices.contains(value) => {
            Err(invalid(
                "",
                format!(
                    "must be one of {}, not {}",
                    short_list(choices),
                    short(&out)
                ),
            ))
        }
        _ => Ok(out),
    }
}

/// A list of choices as JSON, shortened past ten.
fn short_list(choices: &[Value]) -> String {
    if choices.len() <= 10 {
        return Value::from(choices.to_vec()).to_string();
    }
    let head: Vec<String> = choices[..10].iter().map(Value::to_string).collect();
    format!("[{}, … {} more]", head.join(","), choices.len() - 10)
}

fn coerce_kind<'a>(spec: &'a FieldSpec, v: Out<'a>, item: bool) -> Result<Out<'a>, Failed> {
    let field = "";
    let value = v.as_value();
    match spec.ty {
        FieldType::String | FieldType::Text | FieldType::Password => match value {
            Some(Value::String(s)) if spec.format == Some(Format::Uri) && !is_uri(s) => Err(
                invalid(field, format!("must be a valid URI, not {}", short(&v))),
            ),
            Some(Value::String(s)) if spec.format == Some(Format::Email) && !is_email(s) => {
                Err(invalid(
                    field,
                    format!("must be an email address, not {}", short(&v)),
                ))
            }
            Some(Value::String(_)) => Ok(v),
            Some(Value::Number(n)) => Ok(Out::owned(Value::String(n.to_string()))),
            Some(Value::Bool(b)) => Ok(Out::owned(Value::String(b.to_string()))),
            _ => Err(invalid(
                field,
                format!("must be a string, not {}", kind(&v)),
            )),
        },
        FieldType::Number | FieldType::Integer => {
            let n = match value {
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::String(s)) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && !s.trim().is_empty()),
                Some(Value::Bool(b)) => Some(if *b { 1.0 } else { 0.0 }),
                _ => None,
            };
            let Some(n) = n else {
                return Err(invalid(
                    field,
                    format!("must be a number, not {} ({})", kind(&v), short(&v)),
                ));
            };
            if spec.ty == FieldType::Integer {
                if n.fract() != 0.0 || n.abs() > 9.007_199_254_740_991e15 {
                    return Err(invalid(field, format!("must be an integer, not {n}")));
                }
                if value.and_then(Value::as_i64).is_some() {
                    return Ok(v);
                }
                return Ok(Out::owned(Value::Number(Number::from(n as i64))));
            }
            if let Some(Value::Number(_)) = value {
                return Ok(v);
            }
            // As JavaScript prints it: "34" becomes 34, not 34.0.
            if n.fract() == 0.0 && n.abs() <= 9.007_199_254_740_991e15 {
                return Ok(Out::owned(Value::Number(Number::from(n as i64))));
            }
            Ok(Out::owned(
                Number::from_f64(n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
            ))
        }
        FieldType::Boolean => match value {
            Some(Value::Bool(_)) => Ok(v),
            Some(Value::String(s)) if s == "true" => Ok(Out::Ref(&TRUE)),
            Some(Value::String(s)) if s == "false" => Ok(Out::Ref(&FALSE)),
            Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Ok(Out::Ref(&TRUE)),
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(Out::Ref(&FALSE)),
            _ => Err(invalid(
                field,
                format!("must be true or false, not {}", short(&v)),
            )),
        },
        // Date-like: an ISO string, or unix seconds/milliseconds; kept as given.
        FieldType::Datetime => match value {
            Some(Value::String(_) | Value::Number(_)) => Ok(v),
            _ => Err(invalid(
                field,
                format!("must be a date (a string or a number), not {}", kind(&v)),
            )),
        },
        FieldType::Object => {
            let Some(props) = &spec.properties else {
                return match kind(&v) {
                    "an object" => Ok(v),
                    k => Err(invalid(field, format!("must be an object, not {k}"))),
                };
            };
            let k = kind(&v);
            let Some(entries) = v.into_entries() else {
                return Err(invalid(field, format!("must be an object, not {k}")));
            };
            let mut entries = Entries::of(entries);
            let mut out = Vec::with_capacity(props.len());
            for (k, p) in props {
                if let Some(v) = object_property(k, p, entries.take(k), item)? {
                    put(&mut out, k, v);
                }
            }
            if spec.additional_properties {
                out.extend(entries.rest());
            }
            Ok(Out::object(out))
        }
    }
}

/// What `null` becomes in a property of a list's element: its type's empty value (a
/// multiple or an object property is left out).
fn empty_of<'a>(spec: &FieldSpec) -> Option<Out<'a>> {
    if spec.multiple {
        return None;
    }
    match spec.ty {
        FieldType::String | FieldType::Text | FieldType::Password | FieldType::Datetime => {
            Some(Out::owned(Value::String(String::new())))
        }
        FieldType::Number | FieldType::Integer => Some(Out::owned(Value::Number(0.into()))),
        FieldType::Boolean => Some(Out::Ref(&FALSE)),
        FieldType::Object => None,
    }
}

fn short(v: &Out) -> String {
    let s = v.clone().into_value().to_string();
    if s.len() > 40 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(40).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(ty: FieldType) -> FieldSpec {
        FieldSpec::of(ty)
    }

    fn fields() -> Vec<(String, FieldSpec)> {
        vec![
            (
                "id".into(),
                FieldSpec {
                    required: true,
                    ..spec(FieldType::String)
                },
            ),
            ("price".into(), spec(FieldType::Number)),
            ("qty".into(), spec(FieldType::Integer)),
            ("ok".into(), spec(FieldType::Boolean)),
            (
                "tags".into(),
                FieldSpec {
                    multiple: true,
                    ..spec(FieldType::String)
                },
            ),
            ("when".into(), spec(FieldType::Datetime)),
            (
                "maybe".into(),
                FieldSpec {
                    allow_null: true,
                    ..spec(FieldType::String)
                },
            ),
            (
                "loc".into(),
                FieldSpec {
                    properties: Some(
                        [
                            ("lat".to_string(), spec(FieldType::Number)),
                            ("lon".to_string(), spec(FieldType::Number)),
                        ]
                        .into_iter()
                        .collect(),
                    ),
                    additional_properties: false,
                    ..spec(FieldType::Object)
                },
            ),
        ]
    }

    fn run(v: Value) -> Result<Value, ValidationError> {
        let Value::Object(m) = v else { unreachable!() };
        prepare(&fields(), m).map(Value::Object)
    }

    #[test]
    fn emails_are_checked_as_ajv_formats_does() {
        for good in ["ada@example.com", "A.B+c@Sub.Example.CO", "x_y-z@a-b.io"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            " ada@example.com",
            "ada@example.com\t",
            "Ü@example.com",
            "ada@",
            "@x.com",
            "a@b",
            "a..b@x.com",
            "a@-x.com",
            "not an email",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        let spec = FieldSpec {
            format: Some(Format::Email),
            ..FieldSpec::of(FieldType::String)
        };
        let fields = vec![("email".to_string(), spec)];
        let e = prepare(
            &fields,
            json!({"email": "not an email"})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("email") && e.to_string().contains("email address"),
            "{e}"
        );
        assert!(prepare(
            &fields,
            json!({"email": "ada@example.com"})
                .as_object()
                .unwrap()
                .clone()
        )
        .is_ok());
    }

    #[test]
    fn uris_are_checked_as_ajv_formats_does() {
        for good in [
            "https://cdn.example/p.jpg",
            "https://ex.com/%C3%BC?a=1&b=2#x",
            "x:y",
            "mailto:a@b.c",
        ] {
            assert!(is_uri(good), "{good}");
        }
        for bad in [
            "https://shop.example/p/1?ref=ü",
            "not a url",
            "/relative",
            "https://a b.com",
            "1http://x",
            "https://x/%g1",
            "https://x/%4",
        ] {
            assert!(!is_uri(bad), "{bad}");
        }
        let spec = FieldSpec {
            format: Some(Format::Uri),
            ..FieldSpec::of(FieldType::String)
        };
        let fields = vec![("image_url".to_string(), spec)];
        let e = prepare(
            &fields,
            json!({"image_url": "https://x/ü"})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("image_url") && e.to_string().contains("URI"),
            "{e}"
        );
    }

    #[test]
    fn coerces_cleans_and_drops_unknown_keys() {
        let got = run(json!({
            "id": 50331, "price": "19.90", "qty": "2", "ok": "true", "tags": "a",
            "when": "2026-01-01T00:00:00Z", "maybe": null, "loc": {"lat": "1.5", "lon": 2, "alt": 9},
            "unknown": 1
        }))
        .unwrap();
        assert_eq!(
            got,
            json!({"id": "50331", "price": 19.9, "qty": 2, "ok": true, "tags": ["a"],
                   "when": "2026-01-01T00:00:00Z", "maybe": null, "loc": {"lat": 1.5, "lon": 2}})
        );
        // Empty strings and nulls go (unless null is allowed); an empty optional is fine.
        assert_eq!(
            run(json!({"id": "x", "price": "", "ok": null})).unwrap(),
            json!({"id": "x"})
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (v, field, msg) in [
            (json!({}), "id", "required"),
            (json!({"id": ""}), "id", "required"),
            (json!({"id": "x", "price": "cheap"}), "price", "number"),
            (json!({"id": "x", "qty": 1.5}), "qty", "integer"),
            (json!({"id": "x", "ok": "yes"}), "ok", "true or false"),
            (json!({"id": {"a": 1}}), "id", "string"),
            (json!({"id": "x", "loc": [1]}), "loc", "object"),
            (
                json!({"id": "x", "loc": {"lat": "north"}}),
                "loc.lat",
                "number",
            ),
            (
                json!({"id": "x", "tags": [1, {"a": 1}]}),
                "tags[1]",
                "string",
            ),
        ] {
            let e = run(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.message.contains(msg), "{v}: {e}");
        }
    }

    /// The compiled plan's fused steps (objects in objects, lists of objects) name the
    /// failing property by its whole path, and an `@arrayPath` over something that is
    /// neither a list nor an object is typed like any other value.
    #[test]
    fn typed_mapping_names_nested_properties() {
        let object = |props: Vec<(&str, FieldSpec)>, multiple| FieldSpec {
            multiple,
            properties: Some(props.into_iter().map(|(k, s)| (k.to_string(), s)).collect()),
            additional_properties: false,
            ..spec(FieldType::Object)
        };
        let required = FieldSpec {
            required: true,
            ..spec(FieldType::Number)
        };
        let fields = vec![
            (
                "a".to_string(),
                object(
                    vec![("x", object(vec![("y", required.clone())], false))],
                    false,
                ),
            ),
            ("list".to_string(), object(vec![("n", required)], true)),
        ];
        let mapping = Mapping::compile(&json!({
            "a": {"x": {"y": {"@path": "$.y"}}},
            "list": {"@arrayPath": ["$.items", {"n": {"@path": "$.n"}}]}
        }))
        .unwrap();
        let typed = TypedMapping::new(&fields, &mapping);
        for (event, field, msg) in [
            (json!({"items": []}), "a.x.y", "required"),
            (json!({"y": "z", "items": []}), "a.x.y", "number"),
            (
                json!({"y": 1, "items": [{"n": 1}, {}]}),
                "list[1].n",
                "required",
            ),
            (json!({"y": 1, "items": "flat"}), "list[0]", "object"),
        ] {
            let e = typed.eval(&event).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.message.contains(msg)),
                (field, true),
                "{event}: {e}"
            );
        }
        let event = json!({"y": "2", "items": {"n": "3"}});
        assert_eq!(
            typed.eval(&event).unwrap().into_value(),
            json!({"a": {"x": {"y": 2}}, "list": [{"n": 3}]})
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ty() -> impl Strategy<Value = FieldType> {
        prop_oneof![
            Just(FieldType::String),
            Just(FieldType::Text),
            Just(FieldType::Number),
            Just(FieldType::Integer),
            Just(FieldType::Boolean),
            Just(FieldType::Datetime),
            Just(FieldType::Object),
        ]
    }

    /// A field: a scalar or list type, or an object with typed properties (which may be
    /// objects with typed properties in turn).
    fn spec() -> impl Strategy<Value = FieldSpec> {
        spec_leaf().prop_recursive(2, 12, 3, |inner| {
            (
                spec_leaf(),
                prop::collection::btree_map("[xyz]", inner, 0..3),
                any::<bool>(),
            )
                .prop_map(|(base, props, extra)| FieldSpec {
                    ty: FieldType::Object,
                    properties: Some(props),
                    additional_properties: extra,
                    ..base
                })
        })
    }

    fn spec_leaf() -> impl Strategy<Value = FieldSpec> {
        (ty(), any::<[bool; 4]>()).prop_map(|(ty, [required, multiple, allow_null, skip])| {
            FieldSpec {
                required,
                multiple,
                allow_null,
                skip_when_missing: skip,
                ..FieldSpec::of(ty)
            }
        })
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i16>().prop_map(Value::from),
            Just(json!(1.5)),
            prop_oneof![Just(""), Just("x"), Just("12"), Just("2.5"), Just("true")]
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[xyz]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A field's mapping: a path into the event, a raw value, an `@arrayPath` over the
    /// event's `list` with an object shape, or (nested) objects and `@arrayPath`s whose
    /// shapes are made of these.
    fn mapping() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            "[abcdxyz]|list|a\\.x".prop_map(|p| json!({ "@path": format!("$.{p}") })),
            value(),
            Just(json!({"@arrayPath": ["$.list", {"x": {"@path": "$.x"}, "y": {"@path": "$.y"}}]})),
        ];
        leaf.prop_recursive(2, 12, 3, |inner| {
            let object = || {
                prop::collection::btree_map("[xyz]", inner.clone(), 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect()))
            };
            prop_oneof![
                object(),
                ("\\$\\.(list|x|a)", object())
                    .prop_map(|(path, shape)| json!({ "@arrayPath": [path, shape] })),
            ]
        })
    }

    proptest! {
        /// The fused path (each field's mapping evaluated and typed in turn) gives what
        /// evaluating the whole mapping and then preparing it gives — value or error.
        #[test]
        fn typed_mapping_is_eval_then_prepare(
            fields in prop::collection::btree_map("[abcd]", spec(), 0..5),
            entries in prop::collection::vec(("[abcde]", mapping()), 0..6),
            event in prop::collection::btree_map("[abcdxyz]|list", value(), 0..8),
            reverse in any::<bool>(),
        ) {
            let mut fields: Vec<(String, FieldSpec)> = fields.into_iter().collect();
            if reverse {
                fields.reverse();
            }
            let mut seen = std::collections::BTreeSet::new();
            let mut compiled = Vec::new();
            for (k, v) in entries {
                if seen.insert(k.clone()) {
                    compiled.push((k, Mapping::compile(&v).unwrap()));
                }
            }
            let mapping = Mapping::Object(compiled.into());
            let event = Value::Object(event.into_iter().collect());
            let typed = TypedMapping::new(&fields, &mapping);
            let fused = typed.eval(&event).map(Out::into_value);
            let Some(Value::Object(mapped)) = mapping.eval(&event) else { unreachable!() };
            let staged = prepare(&fields, mapped).map(Value::Object);
            prop_assert_eq!(fused, staged);
        }
    }
}
