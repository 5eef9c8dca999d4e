//! Compiling a mapping: the directives, checked once per configuration.

use serde_json::{Map, Value};

use super::*;

pub(super) fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

pub(super) fn err(at: &str, message: impl Into<String>) -> MappingError {
    MappingError {
        at: if at.is_empty() {
            "(root)".into()
        } else {
            at.to_string()
        },
        message: message.into(),
    }
}

pub(super) fn compile(v: &Value, at: &str) -> Result<Mapping, MappingError> {
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

pub(super) fn obj<'a>(
    v: &'a Value,
    at: &str,
    name: &str,
    shape: &str,
) -> Result<&'a Map<String, Value>, MappingError> {
    v.as_object()
        .ok_or_else(|| err(at, format!("{name} takes an object {shape}")))
}

pub(super) fn path_arg(v: &Value, at: &str, name: &str) -> Result<PathArg, MappingError> {
    match v {
        Value::String(s) => Ok(PathArg::Fixed(Path::parse(s))),
        Value::Object(_) => Ok(PathArg::Dynamic(Box::new(compile(v, at)?))),
        _ => Err(err(
            at,
            format!("{name} takes a path string like \"$.properties.total\""),
        )),
    }
}

pub(super) fn directive(name: &str, arg: &Value, at: &str) -> Result<Mapping, MappingError> {
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
            for k in m.keys() {
                if !matches!(k.as_str(), "value" | "each" | "with" | "index") {
                    return Err(err(
                        &join(at, k),
                        "is not a @map key (value, each, with, index)",
                    ));
                }
            }
            match m.get("index") {
                None | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) if m.contains_key("with") => {
                    return Err(err(
                        &join(at, "with"),
                        "cannot go with `index`: `each` reaches the outer value as `$.outer`",
                    ))
                }
                Some(Value::Bool(true)) => {
                    return Ok(Mapping::EachIndexed {
                        value: Box::new(compile(value, &join(at, "value"))?),
                        each: Box::new(compile(each, &join(at, "each"))?),
                    })
                }
                Some(_) => return Err(err(&join(at, "index"), "must be true or false")),
            }
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
        "@date" | "@dates" => {
            let m = obj(arg, at, name, "{value, to: iso|date|s|ms|us}")?;
            for k in m.keys() {
                if !matches!(k.as_str(), "value" | "to") {
                    return Err(err(
                        &join(at, k),
                        format!("is not a {name} key (value, to)"),
                    ));
                }
            }
            let value = m
                .get("value")
                .ok_or_else(|| err(at, format!("{name} needs a `value`")))?;
            let to = match m.get("to").and_then(Value::as_str) {
                Some("iso") => super::DateTo::Iso,
                Some("date") => super::DateTo::Day,
                Some("s") => super::DateTo::Seconds,
                Some("ms") => super::DateTo::Millis,
                Some("us") => super::DateTo::Micros,
                _ => {
                    return Err(err(
                        &join(at, "to"),
                        "must be one of \"iso\", \"date\", \"s\", \"ms\", \"us\"",
                    ))
                }
            };
            let value = Box::new(compile(value, &join(at, "value"))?);
            Ok(if name == "@date" {
                Mapping::Date { value, to }
            } else {
                Mapping::Dates { value, to }
            })
        }
        "@mapValues" => {
            let m = obj(arg, at, "@mapValues", "{value, each}")?;
            for k in m.keys() {
                if !matches!(k.as_str(), "value" | "each") {
                    return Err(err(&join(at, k), "is not a @mapValues key (value, each)"));
                }
            }
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@mapValues needs a `value`"))?;
            let each = m
                .get("each")
                .ok_or_else(|| err(at, "@mapValues needs `each`"))?;
            Ok(Mapping::MapValues {
                value: Box::new(compile(value, &join(at, "value"))?),
                each: Box::new(compile(each, &join(at, "each"))?),
            })
        }
        "@hash" => {
            let m = obj(
                arg,
                at,
                "@hash",
                "{value, algorithm: \"sha256\", keep_hashed?}",
            )?;
            for k in m.keys() {
                if !matches!(k.as_str(), "value" | "algorithm" | "keep_hashed") {
                    return Err(err(
                        &join(at, k),
                        "is not a @hash key (value, algorithm, keep_hashed)",
                    ));
                }
            }
            if m.get("algorithm").and_then(Value::as_str) != Some("sha256") {
                return Err(err(&join(at, "algorithm"), "must be \"sha256\""));
            }
            let keep_hashed = match m.get("keep_hashed") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(err(&join(at, "keep_hashed"), "must be true or false")),
            };
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@hash needs a `value`"))?;
            Ok(Mapping::Hash {
                value: Box::new(compile(value, &join(at, "value"))?),
                keep_hashed,
            })
        }
        "@phone" => {
            let m = obj(arg, at, "@phone", "{value, country?, format: \"e164\"}")?;
            for k in m.keys() {
                if !matches!(k.as_str(), "value" | "country" | "format") {
                    return Err(err(
                        &join(at, k),
                        "is not a @phone key (value, country, format)",
                    ));
                }
            }
            if m.get("format").and_then(Value::as_str) != Some("e164") {
                return Err(err(&join(at, "format"), "must be \"e164\""));
            }
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@phone needs a `value`"))?;
            Ok(Mapping::Phone {
                value: Box::new(compile(value, &join(at, "value"))?),
                country: m
                    .get("country")
                    .map(|c| compile(c, &join(at, "country")))
                    .transpose()?
                    .map(Box::new),
            })
        }
        "@replaceAll" => {
            let m = obj(arg, at, "@replaceAll", "{value, pattern, with}")?;
            for k in m.keys() {
                if !matches!(k.as_str(), "value" | "pattern" | "with") {
                    return Err(err(
                        &join(at, k),
                        "is not a @replaceAll key (value, pattern, with)",
                    ));
                }
            }
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@replaceAll needs a `value`"))?;
            let Some(Value::String(with)) = m.get("with") else {
                return Err(err(&join(at, "with"), "must be the replacement text"));
            };
            Ok(Mapping::ReplaceAll {
                value: Box::new(compile(value, &join(at, "value"))?),
                pattern: regex_at(m.get("pattern"), &join(at, "pattern"))?,
                with: with.clone(),
            })
        }
        "@match" => {
            let m = obj(
                arg,
                at,
                "@match",
                "{value, cases: [{pattern, then | group}], else?}",
            )?;
            for k in m.keys() {
                if !matches!(k.as_str(), "value" | "cases" | "else") {
                    return Err(err(
                        &join(at, k),
                        "is not a @match key (value, cases, else)",
                    ));
                }
            }
            let value = m
                .get("value")
                .ok_or_else(|| err(at, "@match needs a `value`"))?;
            let Some(Value::Array(list)) = m.get("cases") else {
                return Err(err(
                    &join(at, "cases"),
                    "must be a list of {pattern, then} or {pattern, group}",
                ));
            };
            let mut cases = Vec::with_capacity(list.len());
            for (i, case) in list.iter().enumerate() {
                let here = format!("{at}.cases[{i}]");
                let c = obj(case, &here, "a @match case", "{pattern, then | group}")?;
                for k in c.keys() {
                    if !matches!(k.as_str(), "pattern" | "then" | "group") {
                        return Err(err(
                            &join(&here, k),
                            "is not a @match case key (pattern, then, group)",
                        ));
                    }
                }
                let Pattern(re) = regex_at(c.get("pattern"), &join(&here, "pattern"))?;
                let then = match (c.get("then"), c.get("group")) {
                    (Some(t), None) => MatchThen::Then(Box::new(compile(t, &join(&here, "then"))?)),
                    (None, Some(g)) => {
                        let n = g
                            .as_u64()
                            .filter(|n| (*n as usize) < re.captures_len())
                            .ok_or_else(|| {
                                err(
                                    &join(&here, "group"),
                                    format!(
                                        "must be a capture group of the pattern, 0 to {}",
                                        re.captures_len() - 1
                                    ),
                                )
                            })?;
                        MatchThen::Group(n as usize)
                    }
                    _ => return Err(err(&here, "a case needs exactly one of `then` or `group`")),
                };
                cases.push((Pattern(re), then));
            }
            Ok(Mapping::Match {
                value: Box::new(compile(value, &join(at, "value"))?),
                cases,
                otherwise: m
                    .get("else")
                    .map(|e| compile(e, &join(at, "else")))
                    .transpose()?
                    .map(Box::new),
            })
        }
        "@concat" | "@subtract" => {
            let Value::Array(items) = arg else {
                return Err(err(at, format!("{name} takes a list of values")));
            };
            if name == "@subtract" && items.is_empty() {
                return Err(err(at, "@subtract needs at least one value"));
            }
            let items = items
                .iter()
                .enumerate()
                .map(|(i, v)| compile(v, &format!("{at}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if name == "@concat" {
                Mapping::Concat(items)
            } else {
                Mapping::Subtract(items)
            })
        }
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

/// A regular expression given as text (compiled once, its program size bounded so a
/// configuration cannot make a huge one).
fn regex_at(v: Option<&Value>, at: &str) -> Result<Pattern, MappingError> {
    let Some(Value::String(text)) = v else {
        return Err(err(at, "must be a regular expression (text)"));
    };
    regex::RegexBuilder::new(text)
        .size_limit(1 << 20)
        .build()
        .map(Pattern)
        .map_err(|e| err(at, format!("is not a regular expression: {e}")))
}

pub(super) fn template(t: &str) -> Vec<Piece> {
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

pub(super) fn split_plain(p: &str) -> Vec<String> {
    Path::parse(&format!("$.{p}")).0
}
