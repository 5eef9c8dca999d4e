//! Names in the warehouse: Segment's snake case, then what PostgreSQL needs.

use std::borrow::Cow;

/// PostgreSQL's identifier limit, in bytes (`NAMEDATALEN - 1`).
pub const MAX_NAME_BYTES: usize = 63;

/// Segment's snake case (segmentio/go-snakecase), byte for byte: a name that is already
/// lower-case letters, digits and inner single underscores is returned as is; otherwise
/// every run of bytes that are not ASCII letters or digits separates words (none leading
/// or trailing), each word is a run of upper-case letters and digits lower-cased, then a
/// run of lower-case letters and digits. Bytes outside ASCII are dropped.
pub fn snakecase(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let lower_or_digit = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut idx = 0;
    while idx < b.len()
        && (lower_or_digit(b[idx])
            || (b[idx] == b'_' && idx + 1 < b.len() && lower_or_digit(b[idx + 1])))
    {
        idx += 1;
    }
    if idx == b.len() {
        return Cow::Borrowed(s);
    }
    // A digit right before the first upper-case letter starts that letter's word.
    if idx > 0 && b[idx - 1].is_ascii_digit() {
        idx -= 1;
    }
    let mut out: Vec<u8> = Vec::with_capacity(b.len() + 8);
    out.extend_from_slice(&b[..idx]);
    while idx < b.len() {
        if !b[idx].is_ascii_alphanumeric() {
            idx += 1;
            continue;
        }
        if !out.is_empty() {
            out.push(b'_');
        }
        while idx < b.len() && (b[idx].is_ascii_uppercase() || b[idx].is_ascii_digit()) {
            out.push(b[idx].to_ascii_lowercase());
            idx += 1;
        }
        while idx < b.len() && lower_or_digit(b[idx]) {
            out.push(b[idx]);
            idx += 1;
        }
    }
    // Only ASCII bytes were kept, and the prefix taken as is is ASCII too.
    Cow::Owned(String::from_utf8(out).expect("snake case keeps ASCII only"))
}

/// PostgreSQL's reserved key words (`pg_get_keywords()` categories R and T, PostgreSQL
/// 15): a column or table of one of these names would need quoting in every query.
pub const POSTGRES_RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// The tables Sluice itself writes: an event table of one of these names would mix with
/// them, so it gets a leading `_`.
pub const OWN_TABLES: &[&str] = &[
    "tracks",
    "identifies",
    "users",
    "pages",
    "screens",
    "groups",
    "accounts",
    "aliases",
];

/// A column name from a raw key path (`context.app.version` as `context_app_version`):
/// snake case; `None` when nothing is left (the key is dropped); a leading `_` when it
/// starts with a digit or is a reserved word; at most [`MAX_NAME_BYTES`].
pub fn column_name(raw: &str) -> Option<String> {
    let snake = snakecase(raw);
    if snake.is_empty() {
        return None;
    }
    Some(fit(escape(snake)))
}

/// The table of a track event's name (`Order Completed` → `order_completed`); `None`
/// when its snake case is empty (the event then has its `tracks` row only).
pub fn event_table(event: &str) -> Option<String> {
    let snake = snakecase(event);
    if snake.is_empty() {
        return None;
    }
    let mut name = escape(snake);
    if OWN_TABLES.contains(&name.as_str()) {
        name.insert(0, '_');
    }
    Some(fit(name))
}

/// [`column_name`] with the names already made kept: an event's keys repeat from one
/// event to the next, so a consumer names each once. Holds at most
/// [`Names::CAPACITY`] names (then starts again).
#[derive(Debug, Default)]
pub struct Names {
    cache: std::collections::HashMap<String, Option<String>>,
}

impl Names {
    pub const CAPACITY: usize = 100_000;

    /// The column of a raw key path, as [`column_name`] makes it.
    pub fn column(&mut self, raw: &str) -> Option<String> {
        if let Some(name) = self.cache.get(raw) {
            return name.clone();
        }
        if self.cache.len() >= Self::CAPACITY {
            self.cache.clear();
        }
        let name = column_name(raw);
        self.cache.insert(raw.to_string(), name.clone());
        name
    }
}

/// A schema name for a source (its name, snake-cased, as Segment's SQL settings do).
pub fn schema_name(source: &str) -> Option<String> {
    column_name(source)
}

fn escape(snake: Cow<'_, str>) -> String {
    let mut name = snake.into_owned();
    if name.starts_with(|c: char| c.is_ascii_digit())
        || POSTGRES_RESERVED.binary_search(&name.as_str()).is_ok()
    {
        name.insert(0, '_');
    }
    name
}

/// A name within [`MAX_NAME_BYTES`]: a longer one keeps its first 54 bytes and ends in `_`
/// and 8 hex digits of a hash of the whole name, so two long names that share their
/// first 63 bytes stay two columns instead of merging into one.
fn fit(name: String) -> String {
    if name.len() <= MAX_NAME_BYTES {
        return name;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32;
    // Names are ASCII here, so any byte index is a character boundary.
    format!("{}_{hash:08x}", &name[..MAX_NAME_BYTES - 9])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reserved words are looked up by binary search: they must stay sorted.
    #[test]
    fn reserved_words_are_sorted() {
        assert!(POSTGRES_RESERVED.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn names_are_kept_and_the_same_as_made() {
        let mut names = Names::default();
        for raw in ["userAgent", "select", "$$", "9lives", "userAgent"] {
            assert_eq!(names.column(raw), column_name(raw), "{raw}");
        }
        assert_eq!(names.cache.len(), 4);
    }

    /// go-snakecase's own test cases (`snake_test.go`).
    #[test]
    fn segments_published_cases() {
        for (input, want) in [
            ("sample text", "sample_text"),
            ("sample-text", "sample_text"),
            ("sample_text", "sample_text"),
            ("sample___text", "sample_text"),
            ("sampleText", "sample_text"),
            (
                "inviteYourCustomersAddInvites",
                "invite_your_customers_add_invites",
            ),
            ("sample 2 Text", "sample_2_text"),
            ("   sample   2    Text   ", "sample_2_text"),
            ("   $#$sample   2    Text   ", "sample_2_text"),
            ("SAMPLE 2 TEXT", "sample_2_text"),
            ("___$$Base64Encode", "base64_encode"),
            ("FOO:BAR$BAZ", "foo_bar_baz"),
            ("FOO#BAR#BAZ", "foo_bar_baz"),
            ("something.com", "something_com"),
            ("$something%", "something"),
            ("•¶§ƒ˚foo˙∆˚¬", "foo"),
        ] {
            assert_eq!(snakecase(input), want, "{input:?}");
        }
    }

    /// What the algorithm does at its edges, read from the Go code and kept as it is
    /// (Segment's tables are named by it): a digit before the first upper-case letter
    /// moves to that letter's word; a leading `_` before a letter or digit stays (the fast
    /// path takes it), a trailing one goes; `_1B` after a lower-case word makes a double
    /// underscore; nothing at all is an empty name.
    #[test]
    fn edges_of_the_algorithm() {
        assert_eq!(snakecase("Order Completed"), "order_completed");
        assert_eq!(snakecase("sample2Text"), "sample_2text");
        assert_eq!(snakecase("abc_"), "abc");
        assert_eq!(snakecase("_abc"), "_abc");
        assert_eq!(snakecase("a_1B"), "a__1b");
        assert_eq!(snakecase("a_b"), "a_b");
        assert_eq!(snakecase("$$"), "");
        assert_eq!(snakecase(""), "");
        assert_eq!(snakecase("ÄpfelBirnen"), "pfel_birnen");
        assert!(matches!(snakecase("order_completed"), Cow::Borrowed(_)));
    }

    #[test]
    fn postgres_rules_for_names() {
        assert_eq!(
            column_name("context.app.version").unwrap(),
            "context_app_version"
        );
        assert_eq!(
            column_name("context_appVersion").unwrap(),
            "context_app_version"
        );
        assert_eq!(column_name("order").unwrap(), "_order");
        assert_eq!(column_name("user").unwrap(), "_user");
        assert_eq!(column_name("9lives").unwrap(), "_9lives");
        assert_eq!(column_name("%%"), None);
        assert_eq!(event_table("Order Completed").unwrap(), "order_completed");
        assert_eq!(event_table("Tracks").unwrap(), "_tracks");
        assert_eq!(event_table("users").unwrap(), "_users");
        assert_eq!(event_table("Select").unwrap(), "_select");
        assert_eq!(event_table("!!!"), None);
        assert_eq!(schema_name("Web Shop").unwrap(), "web_shop");
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_do_not_collide() {
        let base = "a".repeat(70);
        let (x, y) = (
            column_name(&format!("{base}_x")).unwrap(),
            column_name(&format!("{base}_y")).unwrap(),
        );
        assert_eq!((x.len(), y.len()), (MAX_NAME_BYTES, MAX_NAME_BYTES));
        assert_ne!(x, y, "two long names that share their first 63 bytes");
        assert_eq!(
            column_name(&format!("{base}_x")).unwrap(),
            x,
            "deterministic"
        );
        let exactly = "b".repeat(MAX_NAME_BYTES);
        assert_eq!(column_name(&exactly).unwrap(), exactly);
    }

    proptest! {
        /// Whatever the input: ASCII lower-case letters, digits and underscores only, no
        /// trailing underscore; a column name fits and is not empty.
        #[test]
        fn outputs_are_plain_names(s in "\\PC{0,80}") {
            let out = snakecase(&s);
            prop_assert!(out.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'));
            prop_assert!(!out.ends_with('_'), "{:?} → {:?}", s, out);
            if let Some(name) = column_name(&s) {
                prop_assert!(name.len() <= MAX_NAME_BYTES && !name.is_empty());
            }
        }
    }
}
