//! A warehouse destination's settings: `[[destinations]]` with `type = "warehouse"`.
//!
//! ```toml
//! [[destinations]]
//! name = "analytics"
//! type = "warehouse"
//! sources = ["web"]
//! [destinations.settings]
//! url = "postgres://loader@db.internal:5432/analytics"
//! schemas = { web = "website" }   # default: the source's name, snake-cased
//! batch_rows = 10000              # load when this many rows wait …
//! max_age_s = 10                  # … or when the oldest has waited this long
//! start = "beginning"             # or "now", or a time: "2026-12-01T00:00:00Z"
//! exclude_tables = ["order_refunded"]              # selective sync: tables not loaded
//! exclude_columns = { tracks = ["context_ip"] }    # … and columns, per table
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::naming::schema_name;
use crate::shape::Row;

/// The settings a warehouse takes.
const KEYS: &[&str] = &[
    "url",
    "schemas",
    "batch_rows",
    "max_age_s",
    "start",
    "exclude_tables",
    "exclude_columns",
];

/// The type name of warehouse destinations in `[[destinations]]`.
pub const KIND: &str = "warehouse";

#[derive(Debug, Clone, PartialEq)]
pub struct WarehouseSettings {
    pub name: String,
    /// `postgres://…` of the database the team owns.
    pub url: String,
    pub sources: Vec<String>,
    pub enabled: bool,
    /// Schema per source (default: the source's name, snake-cased).
    pub schemas: BTreeMap<String, String>,
    /// Rows that make a load.
    pub batch_rows: usize,
    /// How long the oldest waiting row may wait for its load.
    pub max_age: Duration,
    /// Where a new warehouse starts in the log (once it has a cursor, it goes on from it).
    pub start: Start,
    /// Selective sync: tables not loaded (warehouse names, `order_refunded`).
    pub exclude_tables: BTreeSet<String>,
    /// Selective sync: columns not loaded, per table.
    pub exclude_columns: BTreeMap<String, BTreeSet<String>>,
}

/// Where a new warehouse starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest event the log retains.
    Beginning,
    /// Events received from its first start on.
    Now,
    /// Events received at or after this time (ms since the epoch).
    At(i64),
}

/// A setting that cannot be used: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `settings.{field}` {message}")]
pub struct InvalidWarehouse {
    pub field: String,
    pub message: String,
}

impl WarehouseSettings {
    /// Checks a `[[destinations]]` entry of type `warehouse`.
    pub fn new(
        name: &str,
        sources: &[String],
        enabled: bool,
        settings: &Map<String, Value>,
    ) -> Result<WarehouseSettings, InvalidWarehouse> {
        let invalid = |field: &str, message: String| InvalidWarehouse {
            field: field.into(),
            message,
        };
        for key in settings.keys() {
            if !KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    key,
                    format!("is not a warehouse setting ({})", KEYS.join(", ")),
                ));
            }
        }
        let url = match settings.get("url").and_then(Value::as_str) {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => u,
            Some(u) => {
                return Err(invalid(
                    "url",
                    format!("must start with postgres:// or postgresql://, not {u:?}"),
                ))
            }
            None => {
                return Err(invalid(
                    "url",
                    "is required: postgres://user@host:port/database".into(),
                ))
            }
        };
        let mut schemas = BTreeMap::new();
        for source in sources {
            let given = match settings.get("schemas").and_then(|s| s.get(source)) {
                None => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(other) => {
                    return Err(invalid(
                        &format!("schemas.{source}"),
                        format!("must be a schema name, not {other}"),
                    ))
                }
            };
            let schema = schema_name(given.unwrap_or(source)).ok_or_else(|| {
                invalid(
                    &format!("schemas.{source}"),
                    "has no letters or digits to name a schema".into(),
                )
            })?;
            schemas.insert(source.clone(), schema);
        }
        let number = |key: &str, default: u64| -> Result<u64, InvalidWarehouse> {
            match settings.get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| {
                        invalid(
                            key,
                            format!("must be a whole number from 1 to 1000000, not {v}"),
                        )
                    }),
            }
        };
        let start = match settings.get("start") {
            None => Start::Beginning,
            Some(Value::String(s)) if s == "beginning" => Start::Beginning,
            Some(Value::String(s)) if s == "now" => Start::Now,
            Some(v) => match v.as_str().and_then(sluice_spec::time::parse_timestamp) {
                Some(t) => Start::At(t.timestamp_millis()),
                None => {
                    return Err(invalid(
                        "start",
                        format!("must be \"beginning\", \"now\" or an ISO-8601 time, not {v}"),
                    ))
                }
            },
        };
        let names = |field: &str, v: &Value| -> Result<BTreeSet<String>, InvalidWarehouse> {
            v.as_array()
                .and_then(|a| a.iter().map(|n| n.as_str().map(str::to_string)).collect())
                .ok_or_else(|| invalid(field, format!("must be a list of names, not {v}")))
        };
        let exclude_tables = match settings.get("exclude_tables") {
            None => BTreeSet::new(),
            Some(v) => names("exclude_tables", v)?,
        };
        let mut exclude_columns = BTreeMap::new();
        match settings.get("exclude_columns") {
            None => {}
            Some(Value::Object(m)) => {
                for (table, v) in m {
                    exclude_columns.insert(
                        table.clone(),
                        names(&format!("exclude_columns.{table}"), v)?,
                    );
                }
            }
            Some(v) => {
                return Err(invalid(
                    "exclude_columns",
                    format!("must be a table of lists of column names, not {v}"),
                ))
            }
        }
        Ok(WarehouseSettings {
            name: name.to_string(),
            url: url.to_string(),
            sources: sources.to_vec(),
            enabled,
            schemas,
            batch_rows: number("batch_rows", 10_000)? as usize,
            max_age: Duration::from_secs(number("max_age_s", 10)?),
            start,
            exclude_tables,
            exclude_columns,
        })
    }

    /// Removes what selective sync leaves out: whole rows of excluded tables, and
    /// excluded columns (never `id`, the merge key).
    pub fn select(&self, rows: &mut Vec<Row>) {
        rows.retain(|r| !self.exclude_tables.contains(&r.table));
        for r in rows.iter_mut() {
            if let Some(columns) = self.exclude_columns.get(&r.table) {
                r.columns.retain(|c, _| c == "id" || !columns.contains(c));
            }
        }
    }

    /// The log consumer's cursor name.
    pub fn consumer(&self) -> String {
        format!("warehouse:{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: Value) -> Result<WarehouseSettings, InvalidWarehouse> {
        let sources = vec!["web".to_string(), "Mobile App".to_string()];
        WarehouseSettings::new("wh", &sources, true, v.as_object().unwrap())
    }

    #[test]
    fn defaults_and_overrides() {
        let s =
            settings(json!({"url": "postgres://u@h/db", "schemas": {"web": "Website"}})).unwrap();
        assert_eq!(s.schemas["web"], "website");
        assert_eq!(s.schemas["Mobile App"], "mobile_app");
        assert_eq!((s.batch_rows, s.max_age), (10_000, Duration::from_secs(10)));
        assert_eq!(s.consumer(), "warehouse:wh");
        assert_eq!(s.start, Start::Beginning);
        let at = settings(json!({"url": "postgres://x", "start": "2026-12-01T00:00:00Z"}));
        assert_eq!(at.unwrap().start, Start::At(1_796_083_200_000));
        let now = settings(json!({"url": "postgres://x", "start": "now"}));
        assert_eq!(now.unwrap().start, Start::Now);
    }

    #[test]
    fn errors_name_the_setting() {
        for (v, field) in [
            (json!({}), "url"),
            (json!({"url": "mysql://x"}), "url"),
            (
                json!({"url": "postgres://x", "batch_rows": 0}),
                "batch_rows",
            ),
            (
                json!({"url": "postgres://x", "max_age_s": "soon"}),
                "max_age_s",
            ),
            (
                json!({"url": "postgres://x", "schemas": {"web": 3}}),
                "schemas.web",
            ),
            (
                json!({"url": "postgres://x", "schemas": {"web": "$$"}}),
                "schemas.web",
            ),
            (json!({"url": "postgres://x", "tables": {}}), "tables"),
            (
                json!({"url": "postgres://x", "start": "yesterday"}),
                "start",
            ),
            (
                json!({"url": "postgres://x", "exclude_tables": "pages"}),
                "exclude_tables",
            ),
            (
                json!({"url": "postgres://x", "exclude_columns": {"tracks": [1]}}),
                "exclude_columns.tracks",
            ),
            (
                json!({"url": "postgres://x", "exclude_columns": []}),
                "exclude_columns",
            ),
        ] {
            assert_eq!(settings(v.clone()).unwrap_err().field, field, "{v}");
        }
    }

    #[test]
    fn selective_sync_leaves_out_tables_and_columns() {
        let s = settings(json!({"url": "postgres://x",
            "exclude_tables": ["pages"],
            "exclude_columns": {"order_completed": ["coupon", "id"]}}))
        .unwrap();
        let mut e = json!({"type": "track", "messageId": "m", "event": "Order Completed",
                           "properties": {"coupon": "X", "revenue": 3}});
        let mut rows = crate::shape::shape(&e).rows;
        e["type"] = json!("page");
        rows.extend(crate::shape::shape(&e).rows);
        s.select(&mut rows);
        let tables: Vec<&str> = rows.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(tables, ["tracks", "order_completed"]);
        let order = &rows[1].columns;
        assert!(!order.contains_key("coupon") && order.contains_key("revenue"));
        assert!(order.contains_key("id"), "the merge key stays");
    }
}
