//! Profile enrichment (`enrich_profile = true`): before mapping, an event gets its resolved
//! profile's traits in `context.traits` (only keys the event does not carry there) and the
//! profile's identifiers in `context.externalIds` — for partners that match users by email
//! while the event only carries a userId. The profile is what the profile consumer has
//! filed when the event is sent.

use serde_json::{json, Map, Value};
use sluice_identity::{traits, Collection, Ident};
use sluice_store::Store;

/// The enriched event, or `None` when there is nothing to add (no profile, not JSON).
pub async fn enrich(store: &dyn Store, payload: &[u8]) -> Option<Vec<u8>> {
    let mut event: Value = serde_json::from_slice(payload).ok()?;
    let text = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let key = match (
        event.get("userId").and_then(text),
        event.get("anonymousId").and_then(text),
    ) {
        (Some(u), _) => Ident::new(Collection::Users, "user_id", &u).key(),
        (None, Some(a)) => Ident::new(Collection::Users, "anonymous_id", &a).key(),
        (None, None) => return None,
    };
    let profile = store.profile(&key).await.ok()??;
    let keys: Vec<String> = profile.members.iter().map(|m| m.key.clone()).collect();
    let rows = store.profile_traits(keys).await.ok()?;
    let merged = traits::merge(rows);
    let obj = event.as_object_mut()?;
    let context = obj
        .entry("context")
        .or_insert_with(|| Value::Object(Map::new()));
    let context = context.as_object_mut()?;
    let ctx_traits = context
        .entry("traits")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(t) = ctx_traits.as_object_mut() {
        for (k, v) in merged {
            t.entry(k).or_insert(v.value);
        }
    }
    let ids = context
        .entry("externalIds")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(list) = ids.as_array_mut() {
        for m in &profile.members {
            let Some(i) = Ident::from_key(&m.key) else {
                continue;
            };
            let present = list.iter().any(|e| {
                e.get("type").and_then(Value::as_str) == Some(&i.ty)
                    && e.get("id").and_then(Value::as_str) == Some(&i.value)
            });
            if !present {
                list.push(
                    json!({"id": i.value, "type": i.ty, "collection": "users", "encoding": "none"}),
                );
            }
        }
    }
    context.insert("profileId".into(), Value::String(profile.id));
    serde_json::to_vec(&event).ok()
}
