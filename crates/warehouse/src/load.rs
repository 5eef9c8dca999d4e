//! Loading rows into a warehouse, the part every engine shares; the engine's own SQL is
//! behind [`Dialect`] (PostgreSQL: [`crate::postgres`]).
//!
//! A load takes one schema's rows, table by table, each in one transaction of the
//! engine:
//!
//! 1. the engine takes the table's lock, creates the table when missing and reads its
//!    columns;
//! 2. [`plan`] decides, from those columns and the rows: the columns to add (a new
//!    column's type is its first value's), and each value as its column holds it — the
//!    same type as is, an integer into a float column, anything into a text column; a
//!    value that cannot fit is written as NULL and recorded in `sluice_discards` with the
//!    reason, so nothing is lost unseen. A table holds at most [`MAX_COLUMNS`] columns;
//!    the keys past that go, as one JSON object, into its `_unmapped_data` text column;
//! 3. the engine adds the columns, bulk-loads the rows into staging and merges: event
//!    tables keep one row per `id` (the latest `received_at`; a row loaded before with
//!    the same `id` is replaced), `users` and `accounts` keep one row per `id` whose
//!    every column is its latest non-null value by `received_at`, across loads too (a
//!    late, older identify fills only what the row lacks).
//!
//! When the engine refuses a table's rows for what they hold (a row too wide, a value
//! out of its range: [`LoadError::Refused`]), the rows are split in halves and loaded
//! again, down to the one row at fault, which is written whole to `sluice_discards`
//! with the engine's reason: one bad row never holds back the others, nor is it lost.
//! Any other failure (the warehouse is down, a permission is missing) fails the load;
//! nothing of the failed table is kept and the consumer tries again later.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::shape::{Cell, ColumnType, Row, OWN_COLUMNS};

/// Tables with one row per `id` whose columns are merged, not replaced.
pub const MERGED_TABLES: &[&str] = &["users", "accounts"];

/// Most columns Sluice gives one table, besides the event's own
/// ([`OWN_COLUMNS`], never capped). PostgreSQL allows 1,600, counting columns
/// dropped by hand, and a row must fit in one 8 kB page: 800 eight-byte values and their
/// null bitmap do. (A row of 800 short strings may not; PostgreSQL refuses it, and the
/// refused row goes whole to `sluice_discards`, as above.)
pub const MAX_COLUMNS: usize = 800;

/// The text column that holds, as one JSON object, the keys of a table that reached
/// [`MAX_COLUMNS`].
pub const UNMAPPED: &str = "_unmapped_data";

/// The columns a table has: name → type (`None`: a type Sluice does not write, set by
/// hand; values for it are discarded).
pub type Columns = BTreeMap<String, Option<ColumnType>>;

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine refused these rows for what they hold; other rows may load.
    #[error("the warehouse refused the rows: {0}")]
    Refused(String),
    /// Anything else: the warehouse cannot be reached, a permission is missing, …
    #[error("warehouse error: {0}")]
    Failed(String),
}

/// One value (or whole row, `column` = `*`) that could not be written as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discard {
    pub column: String,
    pub row_id: Option<String>,
    /// The value as text (a whole row: its columns as a JSON object).
    pub value: String,
    pub reason: String,
    pub received_at: Option<String>,
}

/// What to do to one table: the output of [`plan`], the input of
/// [`Dialect::load_table`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TablePlan<'r> {
    /// Columns to add, with their types.
    pub add: Vec<(String, ColumnType)>,
    /// The columns the rows write, in the order of each row's values.
    pub written: Vec<String>,
    /// The rows' values as text, row after row, `written.len()` per row (`None`: NULL);
    /// text borrowed from the rows where it can be.
    pub values: Vec<Option<Cow<'r, str>>>,
    pub discards: Vec<Discard>,
    /// `users` and `accounts`: merged per column rather than replaced.
    pub merged: bool,
}

impl<'r> TablePlan<'r> {
    /// The values of each row.
    pub fn rows(&self) -> impl Iterator<Item = &[Option<Cow<'r, str>>]> {
        self.values.chunks(self.written.len().max(1))
    }
}

/// What one engine provides. Each method is one transaction; names come quoted by the
/// engine (they are plain already, see [`crate::naming`]).
pub trait Dialect {
    /// Creates the schema and its `sluice_discards` table when missing (safe when two
    /// nodes do it at once).
    fn prepare(&mut self, schema: &str) -> Result<(), LoadError>;

    /// In one transaction under the table's lock: creates the table when missing, reads
    /// its columns, asks `plan` what to write, adds the plan's columns, loads its rows
    /// (merging as [`TablePlan::merged`] says) and its discards. Returns the rows written.
    fn load_table<'r>(
        &mut self,
        schema: &str,
        table: &str,
        plan: &mut dyn FnMut(&Columns) -> TablePlan<'r>,
    ) -> Result<TableLoaded, LoadError>;

    /// Writes discards alone (a row the engine refused), in one transaction.
    fn discard(&mut self, schema: &str, table: &str, discards: &[Discard])
        -> Result<(), LoadError>;

    /// Deletes, from every table of the schema, the rows of these users (by `user_id`,
    /// `anonymous_id`, `previous_id`, and `users.id`), and their discards. Returns the
    /// rows deleted.
    fn erase(
        &mut self,
        schema: &str,
        user_ids: &[String],
        anonymous_ids: &[String],
    ) -> Result<u64, LoadError>;

    /// The schema's latest discards, newest first (none when it has no discards table).
    fn latest_discards(
        &mut self,
        schema: &str,
        limit: u32,
    ) -> Result<Vec<StoredDiscard>, LoadError>;
}

/// A discard as the warehouse keeps it: [`Discard`], its table and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDiscard {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub row_id: Option<String>,
    pub value: Option<String>,
    pub reason: String,
    /// ISO-8601 UTC, as every time the admin API shows.
    pub received_at: Option<String>,
    pub loaded_at: String,
}

/// What one table's load did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableLoaded {
    pub rows: u64,
    pub discarded: u64,
    pub columns_added: u64,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Rows written per table (after merging repeats of an `id`).
    pub rows: BTreeMap<String, u64>,
    /// Values (or whole rows) that could not be written as they came (in `sluice_discards`).
    pub discarded: u64,
    /// Columns added.
    pub columns_added: u64,
}

impl Loaded {
    pub fn add(&mut self, other: Loaded) {
        for (t, n) in other.rows {
            *self.rows.entry(t).or_default() += n;
        }
        self.discarded += other.discarded;
        self.columns_added += other.columns_added;
    }
}

/// Loads `rows` into `schema`, one transaction per table.
pub fn load(db: &mut dyn Dialect, schema: &str, rows: &[Row]) -> Result<Loaded, LoadError> {
    let mut by_table: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_table.entry(r.table.as_str()).or_default().push(r);
    }
    db.prepare(schema)?;
    let mut loaded = Loaded::default();
    for (table, rows) in by_table {
        load_rows(db, schema, table, &rows, &mut loaded)?;
    }
    Ok(loaded)
}

/// One table's rows; on [`LoadError::Refused`], each half again, down to the row at
/// fault, which goes whole to `sluice_discards`.
fn load_rows(
    db: &mut dyn Dialect,
    schema: &str,
    table: &str,
    rows: &[&Row],
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    let merged = MERGED_TABLES.contains(&table);
    match db.load_table(schema, table, &mut |columns| plan(rows, columns, merged)) {
        Ok(l) => {
            *loaded.rows.entry(table.to_string()).or_default() += l.rows;
            loaded.discarded += l.discarded;
            loaded.columns_added += l.columns_added;
            Ok(())
        }
        Err(LoadError::Refused(reason)) if rows.len() == 1 => {
            let row = rows[0];
            let whole: Map<String, Value> = row
                .columns
                .iter()
                .map(|(k, c)| (k.clone(), Value::String(text(c).into_owned())))
                .collect();
            let discard = Discard {
                column: "*".into(),
                row_id: row.columns.get("id").map(|c| text(c).into_owned()),
                value: Value::Object(whole).to_string(),
                reason,
                received_at: row.columns.get("received_at").map(|c| text(c).into_owned()),
            };
            db.discard(schema, table, &[discard])?;
            loaded.discarded += 1;
            Ok(())
        }
        Err(LoadError::Refused(_)) => {
            let (a, b) = rows.split_at(rows.len() / 2);
            load_rows(db, schema, table, a, loaded)?;
            load_rows(db, schema, table, b, loaded)
        }
        Err(e) => Err(e),
    }
}

fn type_name(t: Option<ColumnType>) -> &'static str {
    match t {
        Some(ColumnType::Boolean) => "boolean",
        Some(ColumnType::Integer) => "integer",
        Some(ColumnType::Float) => "float",
        Some(ColumnType::Timestamp) => "timestamp",
        Some(ColumnType::Text) => "text",
        None => "another type",
    }
}

/// A value as text, as a text column holds it (timestamps are in one form already).
fn text(cell: &Cell) -> Cow<'_, str> {
    match cell {
        Cell::Boolean(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Cell::Integer(i) => Cow::Owned(i.to_string()),
        Cell::Float(f) => Cow::Owned(f.to_string()),
        Cell::Timestamp(t) | Cell::Text(t) => Cow::Borrowed(t),
    }
}

/// A value as its column can hold it, or why it cannot.
fn fit(cell: &Cell, column: Option<ColumnType>) -> Result<Cow<'_, str>, String> {
    match (cell.column_type(), column) {
        (from, Some(to)) if from == to => Ok(text(cell)),
        (ColumnType::Integer, Some(ColumnType::Float)) | (_, Some(ColumnType::Text)) => {
            Ok(text(cell))
        }
        (from, to) => Err(format!(
            "incompatible schema conversion from {} to {}",
            type_name(Some(from)),
            type_name(to)
        )),
    }
}

/// Adds to the sorted `union` the names of `row` it lacks (a row's names are sorted, and
/// most rows of a table have the same ones: one pass over both, usually nothing added).
fn union_with<'r>(union: &mut Vec<&'r str>, row: &'r Row) {
    let mut missing = Vec::new();
    let mut u = union.iter().peekable();
    for name in row.columns.keys() {
        while u.next_if(|x| **x < name.as_str()).is_some() {}
        if u.next_if(|x| **x == name.as_str()).is_none() {
            missing.push(name.as_str());
        }
    }
    if !missing.is_empty() {
        union.extend(missing);
        union.sort_unstable();
    }
}

/// The rows, each id once: its latest by `received_at` (timestamps are in one form, so
/// they compare as text), the last of equals. In their order, when no id repeats.
fn latest_per_id<'r>(rows: &[&'r Row]) -> Vec<&'r Row> {
    fn id(r: &Row) -> Option<Cow<'_, str>> {
        r.columns.get("id").map(text)
    }
    fn received(r: &Row) -> Option<&str> {
        match r.columns.get("received_at") {
            Some(Cell::Timestamp(t)) => Some(t),
            _ => None,
        }
    }
    let mut at: std::collections::HashMap<Cow<'r, str>, usize> = std::collections::HashMap::new();
    let mut out: Vec<&'r Row> = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(key) = id(row) else {
            out.push(row);
            continue;
        };
        match at.get(&key) {
            Some(&i) if received(row) < received(out[i]) => {}
            Some(&i) => out[i] = row,
            None => {
                at.insert(key, out.len());
                out.push(row);
            }
        }
    }
    out
}

/// What to write to a table that has `columns`, for `rows`.
pub fn plan<'r>(rows: &[&'r Row], columns: &Columns, merged: bool) -> TablePlan<'r> {
    let mut out = TablePlan {
        merged,
        ..TablePlan::default()
    };
    // Event tables: one row per id, the latest by `received_at` (the last of equals):
    // a retried or replayed event is written once.
    let kept: Vec<&Row>;
    let rows = if merged {
        rows
    } else {
        kept = latest_per_id(rows);
        &kept[..]
    };
    let mut union: Vec<&str> = Vec::new();
    for row in rows {
        union_with(&mut union, row);
    }
    // The columns the rows bring: the event's own first (they are never capped), then
    // the others in name order; past the cap, `_unmapped_data`.
    let mut count = columns.len();
    let mut has_unmapped = columns.contains_key(UNMAPPED);
    let mut mapped: Vec<(&str, Option<ColumnType>)> = Vec::with_capacity(union.len() + 1);
    let mut any_unmapped = false;
    let first_type = |name: &str| {
        rows.iter()
            .find_map(|r| r.columns.get(name))
            .map(Cell::column_type)
            .unwrap_or(ColumnType::Text)
    };
    for own in [true, false] {
        for name in union.iter().copied() {
            if OWN_COLUMNS.contains(&name) != own {
                continue;
            }
            if let Some(t) = columns.get(name) {
                mapped.push((name, *t));
                continue;
            }
            if !own && count + 1 >= MAX_COLUMNS && !has_unmapped {
                out.add.push((UNMAPPED.into(), ColumnType::Text));
                has_unmapped = true;
                count += 1;
            }
            if own || count < MAX_COLUMNS {
                let t = first_type(name);
                out.add.push((name.to_string(), t));
                mapped.push((name, Some(t)));
                count += 1;
            } else {
                any_unmapped = true;
            }
        }
    }
    if any_unmapped {
        mapped.push((UNMAPPED, Some(ColumnType::Text)));
    }
    mapped.sort_unstable_by_key(|(n, _)| *n);
    out.written = mapped.iter().map(|(n, _)| n.to_string()).collect();
    let width = mapped.len();
    out.values.reserve(rows.len() * width);
    for row in rows {
        let start = out.values.len();
        out.values.resize(start + width, None);
        let mut extra = Map::new();
        // Both sorted by name: one pass.
        let mut w = mapped.iter().enumerate().peekable();
        for (name, cell) in &row.columns {
            while w.next_if(|(_, (n, _))| *n < name.as_str()).is_some() {}
            let Some((i, (_, column))) = w.next_if(|(_, (n, _))| *n == name.as_str()) else {
                extra.insert(name.clone(), Value::String(text(cell).into_owned()));
                continue;
            };
            out.values[start + i] = match fit(cell, *column) {
                Ok(v) => Some(v),
                Err(reason) => {
                    out.discards.push(Discard {
                        column: name.clone(),
                        row_id: row.columns.get("id").map(|c| text(c).into_owned()),
                        value: text(cell).into_owned(),
                        reason,
                        received_at: row.columns.get("received_at").map(|c| text(c).into_owned()),
                    });
                    None
                }
            };
        }
        if !extra.is_empty() {
            let at = mapped.iter().position(|(n, _)| *n == UNMAPPED);
            if let Some(at) = at {
                out.values[start + at] = Some(Cow::Owned(Value::Object(extra).to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(columns: &[(&str, Cell)]) -> Row {
        Row {
            table: "t".into(),
            columns: columns
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn values_fit_their_columns_or_say_why_not() {
        let int = Cell::Integer(3);
        assert_eq!(fit(&int, Some(ColumnType::Integer)).unwrap(), "3");
        assert_eq!(fit(&int, Some(ColumnType::Float)).unwrap(), "3");
        assert_eq!(fit(&int, Some(ColumnType::Text)).unwrap(), "3");
        assert_eq!(
            fit(&Cell::Text("abc".into()), Some(ColumnType::Integer)).unwrap_err(),
            "incompatible schema conversion from text to integer"
        );
        assert_eq!(
            fit(&Cell::Float(1.5), Some(ColumnType::Integer)).unwrap_err(),
            "incompatible schema conversion from float to integer"
        );
        assert_eq!(
            fit(&Cell::Boolean(true), None).unwrap_err(),
            "incompatible schema conversion from boolean to another type"
        );
        // Timestamps are written in one form every engine reads.
        let t = Cell::of(&serde_json::json!("2026-12-07T10:00:00+01:00")).unwrap();
        assert_eq!(
            fit(&t, Some(ColumnType::Timestamp)).unwrap(),
            "2026-12-07T09:00:00.000Z"
        );
    }

    #[test]
    fn a_plan_adds_new_columns_and_discards_misfits() {
        let existing: Columns = [
            ("id".to_string(), Some(ColumnType::Text)),
            ("n".to_string(), Some(ColumnType::Integer)),
        ]
        .into();
        let a = row(&[
            ("id", Cell::Text("a".into())),
            ("n", Cell::Text("x".into())),
            ("m", Cell::Boolean(true)),
        ]);
        let b = row(&[("id", Cell::Text("b".into())), ("n", Cell::Integer(2))]);
        let p = plan(&[&a, &b], &existing, false);
        assert_eq!(p.add, vec![("m".to_string(), ColumnType::Boolean)]);
        assert_eq!(p.written, vec!["id", "m", "n"]);
        let values: Vec<Vec<Option<&str>>> = p
            .rows()
            .map(|r| r.iter().map(|v| v.as_deref()).collect())
            .collect();
        assert_eq!(
            values,
            vec![
                vec![Some("a"), Some("true"), None],
                vec![Some("b"), None, Some("2")],
            ]
        );
        assert_eq!(p.discards.len(), 1);
        assert_eq!(p.discards[0].column, "n");
        assert_eq!(p.discards[0].row_id.as_deref(), Some("a"));
        assert_eq!(p.discards[0].value, "x");
    }

    /// Each id once in an event table's plan: the latest by `received_at`, whatever type
    /// the id has (a numeric messageId repeats too).
    #[test]
    fn a_plan_keeps_each_id_once_the_latest() {
        let at = |id: Cell, t: &str, v: i64| {
            row(&[
                ("id", id),
                ("received_at", Cell::Timestamp(t.into())),
                ("v", Cell::Integer(v)),
            ])
        };
        let rows = [
            at(Cell::Text("a".into()), "2026-12-07T10:00:01.000Z", 1),
            at(Cell::Integer(7), "2026-12-07T10:00:00.000Z", 2),
            at(Cell::Text("a".into()), "2026-12-07T10:00:00.000Z", 3),
            at(Cell::Integer(7), "2026-12-07T10:00:02.000Z", 4),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let p = plan(&refs, &Columns::new(), false);
        let v = p.written.iter().position(|c| c == "v").unwrap();
        let kept: Vec<&str> = p.rows().map(|r| r[v].as_deref().unwrap()).collect();
        assert_eq!(kept, ["1", "4"]);
        // `users` and `accounts` keep every row: the engine merges them per column.
        assert_eq!(plan(&refs, &Columns::new(), true).rows().count(), 4);
    }

    /// Past [`MAX_COLUMNS`], keys go to `_unmapped_data` as one JSON object: none lost.
    #[test]
    fn keys_past_the_column_cap_go_to_unmapped_data() {
        let mut cells: Vec<(String, Cell)> = (0..MAX_COLUMNS + 50)
            .map(|i| (format!("k{i:05}"), Cell::Integer(i as i64)))
            .collect();
        cells.push(("id".into(), Cell::Text("a".into())));
        let r = Row {
            table: "t".into(),
            columns: cells.into_iter().collect(),
        };
        let existing: Columns = [("id".to_string(), Some(ColumnType::Text))].into();
        let p = plan(&[&r], &existing, false);
        assert_eq!(existing.len() + p.add.len(), MAX_COLUMNS);
        assert!(p.add.iter().any(|(c, _)| c == UNMAPPED));
        let at = p.written.iter().position(|c| c == UNMAPPED).unwrap();
        let extra: Map<String, Value> =
            serde_json::from_str(p.values[at].as_deref().unwrap()).unwrap();
        // Every key is either a column written or in `_unmapped_data`.
        let in_columns = p.written.len() - 1;
        assert_eq!(in_columns + extra.len(), r.columns.len());
        assert_eq!(
            extra[&format!("k{:05}", MAX_COLUMNS + 49)],
            (MAX_COLUMNS + 49).to_string()
        );
        // A second batch on the full table adds nothing, and its new keys go there too.
        let full: Columns = existing
            .into_iter()
            .chain(p.add.iter().map(|(c, t)| (c.clone(), Some(*t))))
            .collect();
        let r2 = row(&[("id", Cell::Text("b".into())), ("zz", Cell::Integer(1))]);
        let p2 = plan(&[&r2], &full, false);
        assert!(p2.add.is_empty());
        assert_eq!(p2.written, vec!["_unmapped_data", "id"]);
        assert_eq!(p2.values[0].as_deref(), Some(r#"{"zz":"1"}"#));
    }
}
