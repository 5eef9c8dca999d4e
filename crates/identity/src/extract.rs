//! The identifiers, traits and links one event carries (Segment's Unify identity resolution).

use serde_json::{Map, Value};

use crate::rules::Rules;

/// Which profiles an identifier belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    Users,
    Accounts,
}

impl Collection {
    pub fn name(self) -> &'static str {
        match self {
            Collection::Users => "users",
            Collection::Accounts => "accounts",
        }
    }

    pub fn from_name(name: &str) -> Option<Collection> {
        match name {
            "users" => Some(Collection::Users),
            "accounts" => Some(Collection::Accounts),
            _ => None,
        }
    }

    /// The one-letter prefix of stored identifier keys.
    pub fn tag(self) -> char {
        match self {
            Collection::Users => 'u',
            Collection::Accounts => 'a',
        }
    }
}

/// One identifier: a type (`user_id`, `email`, …) and a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident {
    pub collection: Collection,
    pub ty: String,
    pub value: String,
}

impl Ident {
    pub fn new(collection: Collection, ty: &str, value: &str) -> Ident {
        Ident {
            collection,
            ty: ty.to_string(),
            value: value.to_string(),
        }
    }

    /// The stored key: `u|user_id:u1`, `a|group_id:g1`.
    pub fn key(&self) -> String {
        format!("{}|{}:{}", self.collection.tag(), self.ty, self.value)
    }

    /// Parses a stored key.
    pub fn from_key(key: &str) -> Option<Ident> {
        let (tag, rest) = key.split_once('|')?;
        let collection = match tag {
            "u" => Collection::Users,
            "a" => Collection::Accounts,
            _ => return None,
        };
        let (ty, value) = rest.split_once(':')?;
        Some(Ident::new(collection, ty, value))
    }

    /// Parses the Profile API's `type:value`.
    pub fn from_url(collection: Collection, text: &str) -> Option<Ident> {
        let (ty, value) = text.split_once(':')?;
        if ty.is_empty() || value.is_empty() {
            return None;
        }
        let value = if ty == "email" {
            value.trim().to_lowercase()
        } else {
            value.to_string()
        };
        Some(Ident::new(collection, &ty.to_lowercase(), &value))
    }
}

/// What one event tells the profile store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extracted {
    /// Identifiers of the users collection, blocked values removed, without duplicates.
    pub users: Vec<Ident>,
    /// Identifiers of the accounts collection (`group_id`, account external ids).
    pub accounts: Vec<Ident>,
    /// Identify traits (None when the event is no identify or has too many traits).
    pub user_traits: Option<Map<String, Value>>,
    /// Group traits.
    pub account_traits: Option<Map<String, Value>>,
    /// Values that were not promoted because a rule blocks them.
    pub blocked: usize,
    /// The identify/group carried `max_traits` traits or more: its traits were ignored.
    pub too_many_traits: bool,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn snake(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn camel(key: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in key.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads the identifiers and traits of one normalised event.
pub fn extract(event: &Value, rules: &Rules) -> Extracted {
    let mut out = Extracted::default();
    let ty = event.get("type").and_then(Value::as_str).unwrap_or("");
    let context = event.get("context").and_then(Value::as_object);
    let traits = event.get("traits").and_then(Value::as_object);
    let context_traits = context
        .and_then(|c| c.get("traits"))
        .and_then(Value::as_object);
    let add = |out: &mut Extracted, c: Collection, t: &str, v: Option<String>| {
        let Some(v) = v else { return };
        let v = if t == "email" {
            v.trim().to_lowercase()
        } else {
            v
        };
        if rules.is_blocked(t, &v) {
            out.blocked += 1;
            return;
        }
        let id = Ident::new(c, t, &v);
        let list = match c {
            Collection::Users => &mut out.users,
            Collection::Accounts => &mut out.accounts,
        };
        if !list.contains(&id) {
            list.push(id);
        }
    };
    let users = Collection::Users;
    add(&mut out, users, "user_id", text(event.get("userId")));
    add(
        &mut out,
        users,
        "anonymous_id",
        text(event.get("anonymousId")),
    );
    let trait_sources: Vec<&Map<String, Value>> = if ty == "group" {
        context_traits.into_iter().collect()
    } else {
        traits.into_iter().chain(context_traits).collect()
    };
    for t in &trait_sources {
        add(&mut out, users, "email", text(t.get("email")));
    }
    if let Some(device) = context
        .and_then(|c| c.get("device"))
        .and_then(Value::as_object)
    {
        let os = device
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
        if let Some(os @ ("ios" | "android")) = os.as_deref() {
            add(&mut out, users, &format!("{os}.id"), text(device.get("id")));
            if device.get("adTrackingEnabled") == Some(&Value::Bool(true)) {
                add(
                    &mut out,
                    users,
                    &format!("{os}.idfa"),
                    text(device.get("advertisingId")),
                );
            }
            add(
                &mut out,
                users,
                &format!("{os}.push_token"),
                text(device.get("token")),
            );
        }
    }
    let ga = |root: Option<&Value>| {
        text(
            root.and_then(|i| i.get("Google Analytics"))
                .and_then(|g| g.get("clientId")),
        )
    };
    let ga_id =
        ga(event.get("integrations")).or_else(|| ga(context.and_then(|c| c.get("integrations"))));
    add(&mut out, users, "ga_client_id", ga_id);
    for (key, id_type) in &rules.custom_traits {
        for t in &trait_sources {
            for k in [key.clone(), snake(key), camel(key)] {
                add(&mut out, users, id_type, text(t.get(&k)));
            }
        }
    }
    if let Some(ext) = context
        .and_then(|c| c.get("externalIds"))
        .and_then(Value::as_array)
    {
        for e in ext {
            let (Some(id), Some(t), Some(coll), Some(_)) = (
                text(e.get("id")),
                e.get("type").and_then(Value::as_str),
                e.get("collection")
                    .and_then(Value::as_str)
                    .and_then(Collection::from_name),
                e.get("encoding").and_then(Value::as_str),
            ) else {
                continue;
            };
            let t = t.to_lowercase();
            if crate::rules::check_type_name(&t).is_ok() {
                add(&mut out, coll, &t, Some(id));
            }
        }
    }
    if ty == "group" {
        add(
            &mut out,
            Collection::Accounts,
            "group_id",
            text(event.get("groupId")),
        );
    }
    let keep = |m: Option<&Map<String, Value>>, out: &mut Extracted| {
        let m = m?;
        if m.len() >= rules.max_traits {
            out.too_many_traits = true;
            None
        } else {
            Some(m.clone())
        }
    };
    match ty {
        "identify" => out.user_traits = keep(traits, &mut out),
        "group" => out.account_traits = keep(traits, &mut out),
        _ => {}
    }
    out
}

/// The fields of an event that [`extract`] and the event's time are read from: parsing
/// only these skips `properties` and most of `context` without building them (a track
/// call's bulk).
#[derive(serde::Deserialize)]
struct Fields {
    #[serde(rename = "type")]
    ty: Option<serde_json::Value>,
    #[serde(rename = "userId")]
    user_id: Option<serde_json::Value>,
    #[serde(rename = "anonymousId")]
    anonymous_id: Option<serde_json::Value>,
    #[serde(rename = "groupId")]
    group_id: Option<serde_json::Value>,
    traits: Option<serde_json::Value>,
    integrations: Option<serde_json::Value>,
    timestamp: Option<serde_json::Value>,
    context: Option<ContextFields>,
}

#[derive(serde::Deserialize)]
struct ContextFields {
    traits: Option<serde_json::Value>,
    device: Option<serde_json::Value>,
    integrations: Option<serde_json::Value>,
    #[serde(rename = "externalIds")]
    external_ids: Option<serde_json::Value>,
}

/// The event as [`extract`] reads it, from its JSON text: the fields of [`Fields`] that
/// are there (a JSON null is absent either way). What is not an object, or is a shape the
/// narrow parse refuses, is parsed whole.
pub fn identity_fields(payload: &[u8]) -> serde_json::Result<serde_json::Value> {
    let object = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let f: Fields = match serde_json::from_slice(payload) {
        Ok(f) if object => f,
        // Not an object, or a shape the narrow parse refuses (a field twice, `context`
        // not an object): read it whole, as before.
        _ => return serde_json::from_slice(payload),
    };
    let mut m = Map::new();
    let put = |m: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put(&mut m, "type", f.ty);
    put(&mut m, "userId", f.user_id);
    put(&mut m, "anonymousId", f.anonymous_id);
    put(&mut m, "groupId", f.group_id);
    put(&mut m, "traits", f.traits);
    put(&mut m, "integrations", f.integrations);
    put(&mut m, "timestamp", f.timestamp);
    if let Some(c) = f.context {
        let mut cm = Map::new();
        put(&mut cm, "traits", c.traits);
        put(&mut cm, "device", c.device);
        put(&mut cm, "integrations", c.integrations);
        put(&mut cm, "externalIds", c.external_ids);
        m.insert("context".into(), Value::Object(cm));
    }
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The narrow parse gives `extract` and the event time exactly what the whole event
    /// gives, for every shape that names identifiers, and falls back for shapes it refuses.
    #[test]
    fn identity_fields_extract_as_the_whole_event() {
        let mut rules = Rules::default();
        rules
            .custom_traits
            .insert("memberNo".into(), "member".into());
        let events = [
            r#"{"type":"identify","userId":"u1","anonymousId":"a1","timestamp":"2026-11-23T10:00:00.000Z","traits":{"email":" Ann@Example.com ","name":"Ann","member_no":7},"properties":{"big":[1,2,3]}}"#,
            r#"{"type":"track","userId":"u1","event":"Order Completed","properties":{"total":3,"items":[{"sku":"a"}]},"context":{"page":{"path":"/"},"traits":{"email":"b@example.com"},"userAgent":"x"}}"#,
            r#"{"type":"group","userId":"u1","groupId":"g1","traits":{"name":"Acme","email":"acme@example.com"},"context":{"traits":{"email":"u@example.com"}}}"#,
            r#"{"type":"screen","anonymousId":"a2","context":{"device":{"type":"ios","id":"d1","advertisingId":"ad","adTrackingEnabled":true,"token":"t"},"integrations":{"Google Analytics":{"clientId":"ga.2"}},"externalIds":[{"id":"c-9","type":"Customer_Id","collection":"users","encoding":"none"}]}}"#,
            r#"{"type":"page","anonymousId":"a3","integrations":{"Google Analytics":{"clientId":"ga.3"}},"userId":null,"traits":null,"context":null}"#,
            // Shapes the narrow parse refuses: a key twice, context not an object.
            r#"{"type":"track","userId":"first","userId":"second"}"#,
            r#"{"type":"track","userId":"u5","context":"not an object"}"#,
            r#"{"type":"alias","userId":"u6","previousId":"old","timestamp":7}"#,
        ];
        for raw in events {
            let whole: serde_json::Value = serde_json::from_str(raw).unwrap();
            let narrow = identity_fields(raw.as_bytes()).unwrap();
            assert_eq!(extract(&narrow, &rules), extract(&whole, &rules), "{raw}");
            assert_eq!(narrow.get("timestamp"), whole.get("timestamp"), "{raw}");
            assert!(!extract(&narrow, &rules).users.is_empty(), "{raw}");
        }
        assert!(identity_fields(b"{not json").is_err());
        // Not an object (the log holds none): read whole, naming nobody, as before.
        for raw in [&b"[null,\"u1\",null,null,null,null,null,null]"[..], b" 7"] {
            let whole: serde_json::Value = serde_json::from_slice(raw).unwrap();
            assert_eq!(identity_fields(raw).unwrap(), whole);
            assert!(extract(&whole, &rules).users.is_empty());
        }
    }

    fn keys(ids: &[Ident]) -> Vec<String> {
        ids.iter().map(Ident::key).collect()
    }

    #[test]
    fn reads_the_documented_identifiers() {
        let e = json!({
            "type": "identify", "userId": "u1", "anonymousId": "a1",
            "traits": {"email": " Ann@Example.com ", "name": "Ann"},
            "context": {
                "device": {"type": "ios", "id": "dev1", "advertisingId": "ad1",
                           "adTrackingEnabled": true, "token": "push1"},
                "externalIds": [
                    {"id": "c-9", "type": "Customer_Id", "collection": "users", "encoding": "none"},
                    {"id": "x", "type": "incomplete"}
                ]
            },
            "integrations": {"Google Analytics": {"clientId": "ga.1"}}
        });
        let x = extract(&e, &Rules::default());
        assert_eq!(
            keys(&x.users),
            [
                "u|user_id:u1",
                "u|anonymous_id:a1",
                "u|email:ann@example.com",
                "u|ios.id:dev1",
                "u|ios.idfa:ad1",
                "u|ios.push_token:push1",
                "u|ga_client_id:ga.1",
                "u|customer_id:c-9"
            ]
        );
        assert_eq!(x.user_traits.unwrap()["name"], "Ann");
    }

    #[test]
    fn blocked_values_and_ad_tracking_are_respected() {
        let e = json!({
            "type": "track", "userId": "null", "anonymousId": "0000",
            "context": {"traits": {"email": "anonymous"},
                        "device": {"type": "android", "advertisingId": "ad", "adTrackingEnabled": false}}
        });
        let x = extract(&e, &Rules::default());
        assert!(x.users.is_empty(), "{:?}", x.users);
        assert_eq!(x.blocked, 3);
        assert!(x.user_traits.is_none());
    }

    #[test]
    fn group_calls_feed_accounts_and_custom_trait_keys_match_both_spellings() {
        let mut rules = Rules::default();
        rules
            .custom_traits
            .insert("member_number".into(), "member".into());
        let e = json!({"type": "group", "userId": "u1", "groupId": "g1",
                       "traits": {"name": "Acme", "email": "billing@acme.test"}});
        let x = extract(&e, &rules);
        assert_eq!(keys(&x.users), ["u|user_id:u1"]);
        assert_eq!(keys(&x.accounts), ["a|group_id:g1"]);
        assert_eq!(x.account_traits.unwrap()["name"], "Acme");
        let e = json!({"type": "identify", "userId": "u2", "traits": {"memberNumber": 77}});
        assert_eq!(
            keys(&extract(&e, &rules).users),
            ["u|user_id:u2", "u|member:77"]
        );
    }

    #[test]
    fn too_many_traits_are_ignored_but_the_event_still_resolves() {
        let traits: Map<String, Value> = (0..300).map(|i| (format!("t{i}"), json!(i))).collect();
        let e = json!({"type": "identify", "userId": "u1", "traits": traits});
        let x = extract(&e, &Rules::default());
        assert!(x.too_many_traits);
        assert!(x.user_traits.is_none());
        assert_eq!(keys(&x.users), ["u|user_id:u1"]);
    }
}
