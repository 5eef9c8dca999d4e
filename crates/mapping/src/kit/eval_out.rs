//! The borrowed evaluator: the directives that pick, arrange and choose, evaluated to
//! [`Out`] without copying from the event.

use std::borrow::Cow;

use serde_json::Value;

use super::*;

/// The mapping kit's evaluator for the directives that only pick, arrange and choose —
/// the common case, evaluated without copying; the others build values ([`eval`]).
pub(super) fn eval_out<'a>(m: &'a Mapping, event: &'a Value) -> Option<Out<'a>> {
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

pub(super) fn elements(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        one => std::slice::from_ref(one),
    }
}

/// `@map`'s `each` resolved against one element, with `top` on top of object results.
pub(super) fn each_one<'a>(
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
pub(super) fn merged<'a>(v: Out<'a>, top: &[(Cow<'a, str>, Out<'a>)]) -> Out<'a> {
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
