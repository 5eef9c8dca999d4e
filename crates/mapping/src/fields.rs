//! Action fields: their declared types, and what happens to a mapped payload before it
//! is sent (segment-compat 3.4 steps 4–5, destinations.md section 0): cleaning (empty
//! values removed), coercion to the declared type (`"19.90"` → 19.9 for a number,
//! `50331` → `"50331"` for a string, `"true"` → true, a scalar → `[scalar]` for a
//! `multiple` field), unknown keys dropped, and required fields checked. A payload that
//! cannot be fixed is refused with a [`ValidationError`] naming the field — a permanent
//! failure: nothing is sent, nothing is retried.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

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

fn invalid(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
        skip: false,
    }
}

/// Cleans, coerces and checks a mapped payload against the fields of an action. Keys not
/// declared are dropped (the root never takes additional properties).
pub fn prepare(
    fields: &[(String, FieldSpec)],
    payload: Map<String, Value>,
) -> Result<Map<String, Value>, ValidationError> {
    let mut payload = payload;
    let mut out = Map::with_capacity(fields.len());
    for (key, spec) in fields {
        let value = payload.remove(key);
        let value = match value {
            None => None,
            Some(Value::Null) if !spec.allow_null => None,
            // Empty strings are removed at the root.
            Some(Value::String(s)) if s.is_empty() => None,
            Some(v) => Some(coerce(spec, v).map_err(|e| e.under(key))?),
        };
        // A required list that came out empty counts as missing.
        let value = value.filter(|v| {
            !(spec.required && spec.multiple && v.as_array().is_some_and(Vec::is_empty))
        });
        match value {
            Some(v) => {
                out.insert(key.clone(), v);
            }
            None if spec.required => {
                let mut e = invalid(key, "is required but the mapping gave no value");
                e.skip = spec.skip_when_missing;
                return Err(e);
            }
            None => {}
        }
    }
    Ok(out)
}

/// Coerces one value; errors name the path relative to it (`""`, `"[1]"`, `".lat"`),
/// which callers prefix — paths are only built when something is wrong.
fn coerce(spec: &FieldSpec, v: Value) -> Result<Value, ValidationError> {
    if v.is_null() {
        return if spec.allow_null {
            Ok(v)
        } else {
            Err(invalid("", "may not be null"))
        };
    }
    if spec.multiple {
        let items = match v {
            Value::Array(items) => items,
            one => vec![one],
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            // Empty strings in non-string arrays are dropped like at the root.
            if item.as_str() == Some("") && !is_stringy(spec.ty) {
                continue;
            }
            out.push(coerce_one(spec, item).map_err(|e| e.under(&format!("[{i}]")))?);
        }
        return Ok(Value::Array(out));
    }
    coerce_one(spec, v)
}

impl ValidationError {
    /// The same error one level up: `parent` + this path.
    fn under(mut self, parent: &str) -> ValidationError {
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

fn coerce_one(spec: &FieldSpec, v: Value) -> Result<Value, ValidationError> {
    let field = "";
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    match spec.ty {
        FieldType::String | FieldType::Text | FieldType::Password => match v {
            Value::String(_) => Ok(v),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            other => Err(invalid(
                field,
                format!("must be a string, not {}", kind(&other)),
            )),
        },
        FieldType::Number | FieldType::Integer => {
            let n = match &v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && !s.trim().is_empty()),
                Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
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
                return Ok(Value::Number(Number::from(n as i64)));
            }
            if let Value::Number(_) = v {
                return Ok(v);
            }
            // As JavaScript prints it: "34" becomes 34, not 34.0.
            if n.fract() == 0.0 && n.abs() <= 9.007_199_254_740_991e15 {
                return Ok(Value::Number(Number::from(n as i64)));
            }
            Ok(Number::from_f64(n)
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }
        FieldType::Boolean => match v {
            Value::Bool(_) => Ok(v),
            Value::String(ref s) if s == "true" => Ok(Value::Bool(true)),
            Value::String(ref s) if s == "false" => Ok(Value::Bool(false)),
            Value::Number(ref n) if n.as_f64() == Some(1.0) => Ok(Value::Bool(true)),
            Value::Number(ref n) if n.as_f64() == Some(0.0) => Ok(Value::Bool(false)),
            other => Err(invalid(
                field,
                format!("must be true or false, not {}", short(&other)),
            )),
        },
        // Date-like: an ISO string, or unix seconds/milliseconds; kept as given.
        FieldType::Datetime => match v {
            Value::String(_) | Value::Number(_) => Ok(v),
            other => Err(invalid(
                field,
                format!(
                    "must be a date (a string or a number), not {}",
                    kind(&other)
                ),
            )),
        },
        FieldType::Object => match v {
            Value::Object(m) => match &spec.properties {
                None => Ok(Value::Object(m)),
                Some(props) => {
                    let mut m = m;
                    let mut out = Map::with_capacity(m.len());
                    for (k, p) in props {
                        match m.remove(k) {
                            None => {
                                if p.required {
                                    return Err(invalid(
                                        k,
                                        "is required but the mapping gave no value",
                                    ));
                                }
                            }
                            Some(Value::Null) if !p.allow_null => {}
                            Some(Value::String(s)) if s.is_empty() && !is_stringy(p.ty) => {}
                            Some(val) => {
                                let v = coerce(p, val).map_err(|e| e.under(k))?;
                                out.insert(k.clone(), v);
                            }
                        }
                    }
                    if spec.additional_properties {
                        for (k, val) in m {
                            out.insert(k, val);
                        }
                    }
                    Ok(Value::Object(out))
                }
            },
            other => Err(invalid(
                field,
                format!("must be an object, not {}", kind(&other)),
            )),
        },
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
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
}
