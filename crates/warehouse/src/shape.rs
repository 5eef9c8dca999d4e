//! One stored event → the warehouse rows it becomes, in Segment's layout:
//!
//! | call | rows |
//! |---|---|
//! | track | `tracks` (the common columns, `event`, `event_text`) and the event's own table (the same plus its properties); an event name with no letters or digits has its `tracks` row only |
//! | identify | `identifies` (common columns and traits) and, with a `userId`, `users` (`id` = the user id, `received_at`, traits; no `anonymous_id`) |
//! | page, screen | `pages`, `screens` (common columns, `name`, `category`, properties) |
//! | group | `groups` (common columns, `group_id`, traits) and `accounts` (`id` = the group id, `received_at`, traits) |
//! | alias | `aliases` (common columns, `previous_id`) |
//!
//! The common columns: `id` (the messageId), `received_at`, `sent_at`, `timestamp`,
//! `original_timestamp`, `anonymous_id`, `user_id`, and `context_*` (the context,
//! flattened). Nested objects are flattened with `_`, arrays are stored as JSON text,
//! nulls make no column. A key whose column is one of the row's own columns (a property
//! named `user_id` or `event`, a second key with the same snake case) is dropped and
//! listed in [`Shaped::dropped`]: nothing is lost without a count.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::naming::{event_table, Names};

/// The columns Sluice sets from the event itself (not from its properties, traits or
/// context): every table that has them keeps them, whatever else it holds.
pub const OWN_COLUMNS: &[&str] = &[
    "id",
    "received_at",
    "sent_at",
    "timestamp",
    "original_timestamp",
    "anonymous_id",
    "user_id",
    "event",
    "event_text",
    "name",
    "group_id",
    "previous_id",
];

/// The columns the loader sets itself: a key named like one is dropped.
pub const LOADER_COLUMNS: &[&str] = &["uuid_ts", crate::load::UNMAPPED];

/// A column's type: Segment's five.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ColumnType {
    Boolean,
    Integer,
    Float,
    Timestamp,
    Text,
}

/// One value of a row, typed as its column will be created.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Boolean(bool),
    Integer(i64),
    Float(f64),
    /// A timestamp, in UTC as `2026-12-07T10:00:00.000Z`.
    Timestamp(String),
    Text(String),
}

impl Cell {
    pub fn column_type(&self) -> ColumnType {
        match self {
            Cell::Boolean(_) => ColumnType::Boolean,
            Cell::Integer(_) => ColumnType::Integer,
            Cell::Float(_) => ColumnType::Float,
            Cell::Timestamp(_) => ColumnType::Timestamp,
            Cell::Text(_) => ColumnType::Text,
        }
    }

    /// The value of a JSON leaf; `None` for null (no column). Whole numbers are integers
    /// (JSON does not tell `3` from `3.0`); strings that read as a date and time are
    /// timestamps; arrays (and objects, where they are not flattened) are JSON text.
    pub fn of(v: &Value) -> Option<Cell> {
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => Cell::Boolean(*b),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Cell::Integer(i),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Cell::Integer(f as i64),
                (None, Some(f)) => Cell::Float(f),
                (None, None) => Cell::Text(n.to_string()),
            },
            Value::String(s) => match timestamp(s) {
                Some(t) => Cell::Timestamp(t),
                None => Cell::Text(s.clone()),
            },
            other => Cell::Text(other.to_string()),
        })
    }
}

/// A string is a timestamp when it starts as an ISO-8601 date (`YYYY-MM-DD`), is no
/// longer than 40 bytes, and reads as a date and time: `"2026"` or `"12"` stay text. The
/// timestamp is given in one form (`2026-12-07T10:00:00.000Z`, UTC) that every engine
/// reads the same way.
fn timestamp(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let date_like = b.len() >= 10
        && b.len() <= 40
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit);
    if !date_like {
        return None;
    }
    if is_canonical(b) {
        return Some(s.to_string());
    }
    sluice_spec::time::parse_timestamp(s).map(|t| sluice_spec::time::format_timestamp(&t))
}

/// Already in the one form: `YYYY-MM-DDTHH:MM:SS.sssZ` with a real date and time (the
/// form Sluice stores `receivedAt` in), so most timestamps need no parsing.
fn is_canonical(b: &[u8]) -> bool {
    let num = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + (c - b'0') as u32)
        })
    };
    if b.len() != 24
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return false;
    }
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    matches!(
        (num(11..13), num(14..16), num(17..19), num(20..23)),
        (Some(h), Some(mi), Some(sec), Some(_)) if h < 24 && mi < 60 && sec < 60
    ) && chrono::NaiveDate::from_ymd_opt(y as i32, m, d).is_some()
}

/// One row for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub table: String,
    pub columns: BTreeMap<String, Cell>,
}

/// Why a key of the event has no column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its column is one of the row's own (`id`, `user_id`, `event`, …) or another key's.
    Taken,
    /// Its name has no letters or digits.
    NoName,
}

/// A key of the event that has no column in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub table: String,
    /// The key's path in the event (`properties.user_id`).
    pub key: String,
    pub column: Option<String>,
    pub reason: DropReason,
}

/// What one event becomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shaped {
    pub rows: Vec<Row>,
    pub dropped: Vec<Dropped>,
}

/// A row being built: its own columns first, then the event's keys.
struct Builder<'a> {
    row: Row,
    dropped: &'a mut Vec<Dropped>,
    names: &'a mut Names,
}

impl Builder<'_> {
    fn own(&mut self, column: &str, value: Option<&Value>) {
        if let Some(cell) = value.and_then(Cell::of) {
            self.row.columns.insert(column.to_string(), cell);
        }
    }

    /// The keys of `object` (from the event's `path`), flattened, each under
    /// `prefix` + its key path.
    fn keys(&mut self, path: &str, prefix: &str, object: Option<&Value>) {
        let Some(Value::Object(map)) = object else {
            return;
        };
        let mut raw = String::from(prefix);
        self.flatten(path, &mut raw, map);
    }

    /// `raw` holds the prefix of the keys of `map` (and is given back as it came).
    fn flatten(&mut self, path: &str, raw: &mut String, map: &Map<String, Value>) {
        let at = raw.len();
        for (k, v) in map {
            raw.truncate(at);
            if at > 0 {
                raw.push('_');
            }
            raw.push_str(k);
            if let Value::Object(inner) = v {
                self.flatten(&format!("{path}.{k}"), raw, inner);
                continue;
            }
            let Some(cell) = Cell::of(v) else { continue };
            match self.names.column(raw) {
                None => self.dropped.push(Dropped {
                    table: self.row.table.clone(),
                    key: format!("{path}.{k}"),
                    column: None,
                    reason: DropReason::NoName,
                }),
                Some(column)
                    if self.row.columns.contains_key(&column)
                        || LOADER_COLUMNS.contains(&column.as_str()) =>
                {
                    self.dropped.push(Dropped {
                        table: self.row.table.clone(),
                        key: format!("{path}.{k}"),
                        column: Some(column),
                        reason: DropReason::Taken,
                    })
                }
                Some(column) => {
                    self.row.columns.insert(column, cell);
                }
            }
        }
        raw.truncate(at);
    }
}

/// The rows of one stored event (a normalised Segment event: `type`, `messageId`,
/// `receivedAt`, …). An event of another type, or without a messageId, makes none.
pub fn shape(event: &Value) -> Shaped {
    shape_with(&mut Names::default(), event)
}

/// [`shape`], naming columns through `names` (a consumer keeps one for all its events).
pub fn shape_with(names: &mut Names, event: &Value) -> Shaped {
    let mut out = Shaped::default();
    let Some(kind) = event.get("type").and_then(Value::as_str) else {
        return out;
    };
    if event.get("messageId").and_then(Cell::of).is_none() {
        return out;
    }
    let field = |name: &str| event.get(name);
    let event_name = field("event").and_then(Value::as_str);
    let mut s = Shaper {
        out: &mut out,
        names,
        event,
    };
    match kind {
        "track" => {
            let slug = event_name.and_then(event_table);
            let own = [
                (
                    "event",
                    slug.as_deref().map(|s| Value::String(s.to_string())),
                ),
                (
                    "event_text",
                    event_name.map(|s| Value::String(s.to_string())),
                ),
            ];
            let own: Vec<(&str, Option<&Value>)> =
                own.iter().map(|(c, v)| (*c, v.as_ref())).collect();
            // The common columns are the same in both rows: made once.
            let mut dropped = Vec::new();
            let row = s.common("tracks", &mut dropped);
            if let Some(table) = slug {
                let mut copy = row.clone();
                copy.table.clone_from(&table);
                s.out.dropped.extend(dropped.iter().map(|d| Dropped {
                    table: table.clone(),
                    ..d.clone()
                }));
                s.out.dropped.append(&mut dropped);
                s.add_row(row, &own, None);
                s.add_row(copy, &own, Some(("properties", field("properties"))));
            } else {
                s.out.dropped.append(&mut dropped);
                s.add_row(row, &own, None);
            }
        }
        "identify" => {
            let row = s.common_row("identifies");
            s.add_row(row, &[], Some(("traits", field("traits"))));
            s.add_entity("users", "userId");
        }
        "page" | "screen" => {
            let table = if kind == "page" { "pages" } else { "screens" };
            let row = s.common_row(table);
            // Some libraries (Python's) send `category` beside `name`, others (Node's) in
            // the properties too: the column is the same either way.
            let in_properties = field("properties")
                .and_then(|p| p.get("category"))
                .is_some();
            let category = if in_properties {
                None
            } else {
                field("category")
            };
            s.add_row(
                row,
                &[("name", field("name")), ("category", category)],
                Some(("properties", field("properties"))),
            );
        }
        "group" => {
            let row = s.common_row("groups");
            s.add_row(
                row,
                &[("group_id", field("groupId"))],
                Some(("traits", field("traits"))),
            );
            s.add_entity("accounts", "groupId");
        }
        "alias" => {
            let row = s.common_row("aliases");
            s.add_row(row, &[("previous_id", field("previousId"))], None);
        }
        _ => {}
    }
    out
}

/// The rows of one event being made.
struct Shaper<'a> {
    out: &'a mut Shaped,
    names: &'a mut Names,
    event: &'a Value,
}

impl Shaper<'_> {
    /// The one row per user or group (`users`, `accounts`): `id` from the event's
    /// `id_key`, `received_at` and the traits; none when the event has no such id.
    fn add_entity(&mut self, table: &str, id_key: &str) {
        let event = self.event;
        if event.get(id_key).and_then(Cell::of).is_none() {
            return;
        }
        let row = Row {
            table: table.to_string(),
            columns: BTreeMap::new(),
        };
        self.add_row(
            row,
            &[
                ("id", event.get(id_key)),
                ("received_at", event.get("receivedAt")),
            ],
            Some(("traits", event.get("traits"))),
        );
    }

    fn common_row(&mut self, table: &str) -> Row {
        let mut dropped = Vec::new();
        let row = self.common(table, &mut dropped);
        self.out.dropped.append(&mut dropped);
        row
    }

    /// A row of `table` with the common columns of the event; its dropped keys into
    /// `dropped`.
    fn common(&mut self, table: &str, dropped: &mut Vec<Dropped>) -> Row {
        let event = self.event;
        let mut b = Builder {
            row: Row {
                table: table.to_string(),
                columns: BTreeMap::new(),
            },
            dropped,
            names: self.names,
        };
        for (column, key) in [
            ("id", "messageId"),
            ("received_at", "receivedAt"),
            ("sent_at", "sentAt"),
            ("timestamp", "timestamp"),
            ("original_timestamp", "originalTimestamp"),
            ("anonymous_id", "anonymousId"),
            ("user_id", "userId"),
        ] {
            b.own(column, event.get(key));
        }
        b.keys("context", "context", event.get("context"));
        b.row
    }

    /// Adds `row` with its own columns set, then the keys of the event's object at
    /// `keys` (`("properties", …)`), un-prefixed.
    fn add_row(
        &mut self,
        row: Row,
        own: &[(&str, Option<&Value>)],
        keys: Option<(&str, Option<&Value>)>,
    ) {
        let mut b = Builder {
            row,
            dropped: &mut self.out.dropped,
            names: self.names,
        };
        for (column, value) in own {
            b.own(column, *value);
        }
        if let Some((path, object)) = keys {
            b.keys(path, "", object);
        }
        self.out.rows.push(b.row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base(kind: &str) -> Value {
        json!({
            "type": kind,
            "messageId": "m-1",
            "receivedAt": "2026-12-07T10:00:01.000Z",
            "sentAt": "2026-12-07T10:00:00.500Z",
            "timestamp": "2026-12-07T10:00:00.000Z",
            "originalTimestamp": "2026-12-07T09:59:59.000Z",
            "anonymousId": "anon-1",
            "userId": "u-1",
            "context": {"app": {"version": "1.2"}, "ip": "203.0.113.9", "library": {"name": "analytics.js"}}
        })
    }

    fn text(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    #[test]
    fn a_track_call_makes_a_tracks_row_and_one_in_its_event_table() {
        let mut e = base("track");
        e["event"] = json!("Order Completed");
        e["properties"] = json!({
            "revenue": 19.5, "quantity": 2, "coupon": null, "shipped": false,
            "products": [{"sku": "A"}], "address": {"city": "Berlin", "zipCode": "10115"},
            "user_id": "spoofed", "event": "spoofed", "%%": 1
        });
        let s = shape(&e);
        assert_eq!(s.rows.len(), 2);
        let (tracks, order) = (&s.rows[0], &s.rows[1]);
        assert_eq!(tracks.table, "tracks");
        assert_eq!(order.table, "order_completed");
        for row in [tracks, order] {
            assert_eq!(row.columns["id"], text("m-1"));
            assert_eq!(row.columns["event"], text("order_completed"));
            assert_eq!(row.columns["event_text"], text("Order Completed"));
            assert_eq!(row.columns["user_id"], text("u-1"));
            assert_eq!(row.columns["context_app_version"], text("1.2"));
            assert_eq!(row.columns["context_library_name"], text("analytics.js"));
            assert_eq!(
                row.columns["received_at"],
                Cell::Timestamp("2026-12-07T10:00:01.000Z".into())
            );
        }
        assert!(
            !tracks.columns.contains_key("revenue"),
            "tracks has the common columns only"
        );
        assert_eq!(order.columns["revenue"], Cell::Float(19.5));
        assert_eq!(order.columns["quantity"], Cell::Integer(2));
        assert_eq!(order.columns["shipped"], Cell::Boolean(false));
        assert_eq!(order.columns["products"], text(r#"[{"sku":"A"}]"#));
        assert_eq!(order.columns["address_city"], text("Berlin"));
        assert_eq!(order.columns["address_zip_code"], text("10115"));
        assert!(
            !order.columns.contains_key("coupon"),
            "null makes no column"
        );
        // The properties that would overwrite the row's own columns are dropped, counted.
        let dropped: Vec<(&str, DropReason)> = s
            .dropped
            .iter()
            .map(|d| (d.key.as_str(), d.reason))
            .collect();
        assert_eq!(
            dropped,
            vec![
                ("properties.%%", DropReason::NoName),
                ("properties.event", DropReason::Taken),
                ("properties.user_id", DropReason::Taken),
            ]
        );
        assert_eq!(order.columns["user_id"], text("u-1"));
    }

    #[test]
    fn an_event_name_without_letters_has_its_tracks_row_only() {
        let mut e = base("track");
        e["event"] = json!("!!!");
        let s = shape(&e);
        assert_eq!(s.rows.len(), 1);
        assert_eq!(s.rows[0].table, "tracks");
        assert!(!s.rows[0].columns.contains_key("event"));
        assert_eq!(s.rows[0].columns["event_text"], text("!!!"));
    }

    /// The canonical form is taken as is only when it is a real date and time; anything
    /// else is parsed (and normalised) or stays text.
    #[test]
    fn timestamps_are_checked_even_in_the_canonical_form() {
        for (input, want) in [
            ("2026-12-07T10:00:00.000Z", Some("2026-12-07T10:00:00.000Z")),
            (
                "2026-12-07T10:00:00.5+01:00",
                Some("2026-12-07T09:00:00.500Z"),
            ),
            ("2026-02-30T10:00:00.000Z", None),
            ("2026-13-07T10:00:00.000Z", None),
            ("2026-12-07T24:00:00.000Z", None),
            ("2026-12-07T10:00:00.00xZ", None),
        ] {
            assert_eq!(timestamp(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn identify_makes_identifies_and_users_without_anonymous_id() {
        let mut e = base("identify");
        e["traits"] = json!({"email": "a@example.com", "plan": "pro", "logins": 3.0,
                             "createdAt": "2025-01-15T09:30:00Z", "year": "2026"});
        let s = shape(&e);
        let tables: Vec<&str> = s.rows.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(tables, ["identifies", "users"]);
        let (identifies, users) = (&s.rows[0], &s.rows[1]);
        assert_eq!(identifies.columns["email"], text("a@example.com"));
        assert_eq!(identifies.columns["anonymous_id"], text("anon-1"));
        assert_eq!(identifies.columns["logins"], Cell::Integer(3));
        assert_eq!(
            identifies.columns["created_at"],
            Cell::Timestamp("2025-01-15T09:30:00.000Z".into()),
            "in the one form every engine reads"
        );
        assert_eq!(identifies.columns["year"], text("2026"), "not a timestamp");
        assert_eq!(users.columns["id"], text("u-1"));
        assert_eq!(users.columns["plan"], text("pro"));
        assert!(!users.columns.contains_key("anonymous_id"));
        assert!(!users.columns.contains_key("context_ip"));
        // Anonymous identifies have no users row.
        let mut anon = base("identify");
        anon.as_object_mut().unwrap().remove("userId");
        assert_eq!(shape(&anon).rows.len(), 1);
    }

    #[test]
    fn page_screen_group_and_alias() {
        let mut page = base("page");
        page["name"] = json!("Home");
        page["properties"] = json!({"path": "/", "name": "spoofed"});
        let s = shape(&page);
        assert_eq!(s.rows[0].table, "pages");
        assert_eq!(s.rows[0].columns["name"], text("Home"));
        assert_eq!(s.rows[0].columns["path"], text("/"));
        assert_eq!(s.dropped[0].key, "properties.name");
        // The loader's own columns cannot be set by a key either.
        let mut loader = base("page");
        loader["properties"] = json!({"uuid_ts": 1, "_unmapped_data": "x"});
        let l = shape(&loader);
        assert_eq!(l.dropped.len(), 2);
        assert!(!l.rows[0].columns.contains_key("uuid_ts"));
        // A top-level `category` (Python's library) and one in the properties (Node's)
        // make the same column, and neither is dropped.
        page["category"] = json!("Docs");
        assert_eq!(shape(&page).rows[0].columns["category"], text("Docs"));
        page["properties"]["category"] = json!("Docs");
        let both = shape(&page);
        assert_eq!(both.rows[0].columns["category"], text("Docs"));
        assert_eq!(both.dropped.len(), 1);

        let screen = shape(&base("screen"));
        assert_eq!(screen.rows[0].table, "screens");

        let mut group = base("group");
        group["groupId"] = json!("acme");
        group["traits"] = json!({"employees": 120});
        let s = shape(&group);
        let tables: Vec<&str> = s.rows.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(tables, ["groups", "accounts"]);
        assert_eq!(s.rows[0].columns["group_id"], text("acme"));
        assert_eq!(s.rows[1].columns["id"], text("acme"));
        assert_eq!(s.rows[1].columns["employees"], Cell::Integer(120));

        let mut alias = base("alias");
        alias["previousId"] = json!("anon-1");
        let s = shape(&alias);
        assert_eq!(s.rows[0].table, "aliases");
        assert_eq!(s.rows[0].columns["previous_id"], text("anon-1"));
    }

    #[test]
    fn events_without_a_type_or_message_id_make_no_rows() {
        assert!(shape(&json!({"messageId": "m"})).rows.is_empty());
        assert!(shape(&json!({"type": "track", "event": "x"}))
            .rows
            .is_empty());
        assert!(shape(&json!({"type": "delete", "messageId": "m"}))
            .rows
            .is_empty());
    }

    #[test]
    fn cell_types() {
        assert_eq!(Cell::of(&json!(1)), Some(Cell::Integer(1)));
        assert_eq!(Cell::of(&json!(1.0)), Some(Cell::Integer(1)));
        assert_eq!(Cell::of(&json!(1.5)), Some(Cell::Float(1.5)));
        assert_eq!(Cell::of(&json!(1e300)), Some(Cell::Float(1e300)));
        assert_eq!(
            Cell::of(&json!(u64::MAX)),
            Some(Cell::Float(u64::MAX as f64))
        );
        assert_eq!(Cell::of(&json!(true)), Some(Cell::Boolean(true)));
        assert_eq!(Cell::of(&json!(null)), None);
        assert_eq!(
            Cell::of(&json!("2026-12-07")).unwrap().column_type(),
            ColumnType::Timestamp
        );
        assert_eq!(
            Cell::of(&json!("2026-13-45")).unwrap().column_type(),
            ColumnType::Text
        );
        assert_eq!(
            Cell::of(&json!("12")).unwrap().column_type(),
            ColumnType::Text
        );
        assert_eq!(Cell::of(&json!([1, 2])), Some(Cell::Text("[1,2]".into())));
    }
}
