//! The building evaluator: directives that make new values (templates, string and
//! number functions, flattening), and JavaScript's string and number forms.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use super::*;

/// JavaScript's `String(v)` for template and replace coercions.
pub(super) fn js_string(v: &Value) -> String {
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

pub(super) fn js_number(n: &Number) -> String {
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i.to_string(),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
        (None, Some(f)) => f.to_string(),
        _ => n.to_string(),
    }
}

/// The evaluator for the directives that build new values (templates, string and number
/// functions, flattening, …); [`eval_out`] hands them here.
pub(super) fn eval(m: &Mapping, event: &Value) -> Option<Value> {
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
            // Anything but text, numbers and booleans (undefined included) becomes "", as
            // actions-core's @replace starts from an empty result.
            let v = eval(value, event).unwrap_or(Value::Null);
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
        Mapping::Date { value, to } => date(eval(value, event)?, *to),
        Mapping::Dates { value, to } => Some(dates(eval(value, event)?, *to)),
        Mapping::EachIndexed { value, each } => {
            let items = match eval(value, event)? {
                Value::Null => return None,
                Value::Array(a) => a,
                one => vec![one],
            };
            let mut scope = Map::with_capacity(3);
            scope.insert("outer".into(), event.clone());
            let mut scope = Value::Object(scope);
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                if let Value::Object(m) = &mut scope {
                    m.insert("item".into(), item);
                    m.insert("index".into(), Value::from(i));
                }
                out.extend(eval(each, &scope));
            }
            Some(Value::Array(out))
        }
        Mapping::Match {
            value,
            cases,
            otherwise,
        } => {
            let v = eval(value, event);
            if let Some(Value::String(text)) = &v {
                for (Pattern(re), then) in cases {
                    match then {
                        MatchThen::Then(m) if re.is_match(text) => return eval(m, event),
                        MatchThen::Group(n) => {
                            if let Some(c) = re.captures(text) {
                                return c.get(*n).map(|g| Value::String(g.as_str().to_string()));
                            }
                        }
                        MatchThen::Then(_) => {}
                    }
                }
            }
            otherwise.as_ref().and_then(|o| eval(o, event))
        }
        Mapping::Concat(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match eval(p, event) {
                    Some(Value::Array(a)) => out.extend(a),
                    Some(one) => out.push(one),
                    None => {}
                }
            }
            Some(Value::Array(out))
        }
        Mapping::Subtract(parts) => {
            let mut nums = Vec::with_capacity(parts.len());
            for p in parts {
                match eval(p, event)? {
                    Value::Number(n) => nums.push(n),
                    _ => return None,
                }
            }
            let (first, rest) = nums.split_first()?;
            // Whole numbers stay whole (an epoch in milliseconds minus a position).
            let ints: Option<Vec<i64>> = nums.iter().map(Number::as_i64).collect();
            match ints {
                Some(i) => i[1..]
                    .iter()
                    .try_fold(i[0], |acc, x| acc.checked_sub(*x))
                    .map(Value::from),
                None => {
                    let f = rest.iter().fold(first.as_f64()?, |acc, x| {
                        acc - x.as_f64().unwrap_or(f64::NAN)
                    });
                    Number::from_f64(f).map(Value::Number)
                }
            }
        }
        Mapping::MapValues { value, each } => match eval(value, event)? {
            Value::Object(m) => Some(Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| eval(each, &v).map(|x| (k, x)))
                    .collect(),
            )),
            _ => None,
        },
        Mapping::Phone { value, country } => {
            let text = match eval(value, event)? {
                Value::String(s) => s,
                v @ Value::Number(_) => js_string(&v),
                _ => return None,
            };
            let country = match country.as_ref().map(|c| eval(c, event)) {
                None | Some(None) | Some(Some(Value::Null)) => None,
                Some(Some(Value::String(c))) => Some(
                    c.to_ascii_uppercase()
                        .parse::<phonenumber::country::Id>()
                        .ok()?,
                ),
                Some(Some(_)) => return None,
            };
            let number = phonenumber::parse(country, &text).ok()?;
            let belongs = match country {
                Some(id) => number.country().id() == Some(id),
                None => true,
            };
            (number.is_valid() && belongs)
                .then(|| Value::String(number.format().mode(phonenumber::Mode::E164).to_string()))
        }
        Mapping::ReplaceAll {
            value,
            pattern: Pattern(re),
            with,
        } => match eval(value, event)? {
            Value::String(s) => Some(Value::String(
                re.replace_all(&s, with.as_str()).into_owned(),
            )),
            other => Some(other),
        },
        Mapping::Hash { value, keep_hashed } => {
            let text = match eval(value, event)? {
                Value::String(s) => s,
                v @ Value::Number(_) => js_string(&v),
                _ => return None,
            };
            if *keep_hashed {
                if text.trim().is_empty() {
                    return Some(Value::String(String::new()));
                }
                if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Some(Value::String(text));
                }
            }
            use sha2::Digest;
            let digest = sha2::Sha256::digest(text.as_bytes());
            Some(Value::String(
                digest.iter().map(|b| format!("{b:02x}")).collect(),
            ))
        }
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

pub(super) fn drop_nulls(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::Object(inner) => (k, Value::Object(drop_nulls(inner))),
            other => (k, other),
        })
        .collect()
}

pub(super) fn resolve_path<'a>(p: &'a PathArg, event: &Value) -> Option<Cow<'a, Path>> {
    match p {
        PathArg::Fixed(path) => Some(Cow::Borrowed(path)),
        PathArg::Dynamic(m) => match eval(m, event)? {
            Value::String(s) => Some(Cow::Owned(Path::parse(&s))),
            _ => None,
        },
    }
}

/// JavaScript's `v == ""`.
pub(super) fn loose_eq_empty_string(v: &Value) -> bool {
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

pub(super) fn replace(s: &str, pat: &str, rep: &str, global: bool, ignore_case: bool) -> String {
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
pub(super) fn find_ignoring_case(hay: &str, from: usize, pat: &str) -> Option<(usize, usize)> {
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

pub(super) fn flatten(
    v: &Value,
    prefix: &str,
    sep: &str,
    omit_arrays: bool,
    out: &mut Map<String, Value>,
) {
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

/// ISO-8601's text forms as partners test for them: a day (`2026-12-07`), optionally
/// with a time of hours and minutes, optional seconds and fraction, and an optional `Z`
/// or offset (`+03:00`, `+0300`); nothing else (no week dates, no bare numbers).
pub(super) fn is_iso_date(text: &str) -> bool {
    static SHAPE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2})?(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$",
        )
        .expect("a fixed pattern compiles")
    });
    SHAPE.is_match(text) && sluice_spec::time::parse_timestamp(text).is_some()
}

/// `@dates`: objects walked at any depth, their ISO-8601 texts converted.
fn dates(v: Value, to: super::DateTo) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, x)| (k, dates(x, to))).collect()),
        Value::String(s) if is_iso_date(&s) => {
            date(Value::String(s.clone()), to).unwrap_or(Value::String(s))
        }
        other => other,
    }
}

/// `@date`'s conversion (see [`super::DateTo`]).
fn date(v: Value, to: super::DateTo) -> Option<Value> {
    use super::DateTo;
    use sluice_spec::time::{format_timestamp, parse_timestamp};
    // A number, or text that is one (JavaScript's `+value`, blank text excluded).
    let number = match &v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if !s.trim().is_empty() => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite());
    // A number asked for in an epoch unit is kept as it is.
    if let (Some(n), DateTo::Seconds | DateTo::Millis | DateTo::Micros) = (number, to) {
        return if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_991e15 {
            Some(Value::from(n as i64))
        } else {
            serde_json::Number::from_f64(n).map(Value::Number)
        };
    }
    let t = match number {
        Some(ms) => chrono::DateTime::from_timestamp_millis(ms as i64)?,
        None => parse_timestamp(v.as_str()?)?,
    };
    let ms = t.timestamp_millis();
    Some(match to {
        DateTo::Iso => Value::String(format_timestamp(&t)),
        DateTo::Day => Value::String(format_timestamp(&t)[..10].to_string()),
        DateTo::Seconds => Value::from(ms.div_euclid(1000)),
        DateTo::Millis => Value::from(ms),
        DateTo::Micros => Value::from(ms.saturating_mul(1000)),
    })
}
