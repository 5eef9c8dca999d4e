//! `sluice.toml` examples per section and a property test over any mix of fields.

use super::sources::SourceKind;
use super::*;
use sluice_destinations::duration::parse_duration;

#[test]
fn the_minimal_file_works_as_written() {
    let cfg = parse(
        r#"listen = "127.0.0.1:8088"
data_dir = "./sluice-data"
admin_token = "change-me"
[[sources]]
name = "web"
write_key = "wk_web_123"
"#,
        "sluice.toml",
    )
    .unwrap();
    assert_eq!(cfg.listen.as_deref(), Some("127.0.0.1:8088"));
    assert_eq!(cfg.sources[0].write_key, "wk_web_123");
    assert!(cfg.sources[0].enabled);
    assert_eq!(cfg.dedupe.window.0, Duration::from_secs(86_400));
}

#[test]
fn errors_name_file_line_and_field() {
    let e = parse(
        "listen = \"127.0.0.1:8088\"\n[[sources]]\nname = \"web\"\nwrite_kee = \"x\"\n",
        "a.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("a.toml") && e.contains("line 4") && e.contains("write_kee"),
        "{e}"
    );
    let e = parse("[dedupe]\nwindow = \"3 fortnights\"\n", "b.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("b.toml") && e.contains("line 2") && e.contains("fortnights"),
        "{e}"
    );
    let e = parse("listen = \"nowhere\"\n", "c.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`listen`"), "{e}");
    for (text, needles) in [
        (
            "[console]\nlisten = \"here\"\n",
            &["`console.listen`", "\"here\""][..],
        ),
        (
            "[console]\nenabled = false\nlisten = \"127.0.0.1:8089\"\n",
            &["`console.listen`", "`console.enabled` is false"],
        ),
        (
            "listen = \"127.0.0.1:8088\"\n[console]\nlisten = \"127.0.0.1:8088\"\n",
            &["`console.listen`", "own `listen`"],
        ),
    ] {
        let e = parse(text, "c.toml").unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "{n} not in {e}");
        }
    }
    for (text, needles) in [
        ("workers = 0\n", &["w.toml", "`workers`", "not 0"][..]),
        ("workers = 1025\n", &["`workers`", "1025"]),
        ("workers = -1\n", &["line 1", "workers"]),
        (
            "sqlite_memory_mb = 1048577\n",
            &["`sqlite_memory_mb`", "1048577"],
        ),
        (
            "sqlite_memory_mb = \"32MB\"\n",
            &["line 1", "sqlite_memory_mb"],
        ),
    ] {
        let e = parse(text, "w.toml").unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "{text:?}: {e}");
        }
    }
    let ok = parse("workers = 3\nsqlite_memory_mb = 0\n", "w.toml").unwrap();
    assert_eq!((ok.workers, ok.sqlite_memory_mb), (Some(3), Some(0)));
    let e = parse(
        "[[sources]]\nname = \"a\"\nwrite_key = \"k\"\n[[sources]]\nname = \"b\"\nwrite_key = \"k\"\n",
        "d.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sources[1].write_key"), "{e}");
    let e = parse("[log]\nkind = \"kafkaesque\"\n", "e.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("kafkaesque") && e.contains("line 2"), "{e}");
}

#[test]
fn identity_and_profiles_sections_are_checked() {
    let ok = parse(
        "[identity]\nblocked_values = [\"guest\"]\ncustom_traits = { member_number = \"member\" }\n[identity.types.email]\nlimit = 2\n[profiles]\nspace = \"sp1\"\naccess_tokens = [\"pat_12345678\"]\n",
        "p.toml",
    )
    .unwrap();
    assert_eq!(ok.identity.limit("email"), 2);
    assert_eq!(ok.profiles.space, "sp1");
    for (text, needle) in [
        (
            "[identity.types.Email]\nlimit = 1\n",
            "identity.types.Email",
        ),
        (
            "[identity.types.email]\nlimit = 0\n",
            "limit must be at least 1",
        ),
        ("[identity.types.email]\nlimt = 1\n", "limt"),
        (
            "[identity]\ncustom_traits = { plan = \"Has Space\" }\n",
            "identity.custom_traits.plan",
        ),
        ("[identity]\nmax_merges = 0\n", "max_merges"),
        (
            "[profiles]\naccess_tokens = [\"short\"]\n",
            "profiles.access_tokens[0]",
        ),
        ("[profiles]\nspace = \"a/b\"\n", "profiles.space"),
        ("[profiles]\nspaces = \"x\"\n", "spaces"),
    ] {
        let e = parse(text, "q.toml").unwrap_err().to_string();
        assert!(e.contains("q.toml") && e.contains(needle), "{text}: {e}");
    }
}

/// Values by the type a field expects, each at the boundaries the fields check (zero,
/// negative, too large, malformed, an unset environment variable, empty).
const INT: &[&str] = &[
    "0",
    "-1",
    "1",
    "3",
    "4097",
    "65536",
    "2147483648",
    "9223372036854775807",
];
const FLOAT: &[&str] = &["0", "1.5", "-0.5", "nan", "inf"];
const DUR: &[&str] = &[
    "\"0s\"",
    "\"1s\"",
    "\"100ms\"",
    "\"10m\"",
    "\"24h\"",
    "\"7d\"",
    "\"-5s\"",
    "\"soon\"",
];
const STR: &[&str] = &[
    "\"\"",
    "\"x\"",
    "\"web\"",
    "\"${SLUICE_CONFIG_PROPTEST_UNSET}\"",
    "\"127.0.0.1:0\"",
    "\"http://h:1\"",
    "\"a/b\"",
    "\"pat_12345678\"",
    "\"has space\"",
    "\"k:ey\"",
];
const BOOL: &[&str] = &["true", "false"];
const LOG_FORMAT: &[&str] = &["\"json\"", "\"text\"", "\"xml\""];
const LOG_LEVEL: &[&str] = &[
    "\"info\"",
    "\"warn,sluice_destinations=debug\"",
    "\"loud[\"",
    "\"\"",
];
const LOG_KIND: &[&str] = &["\"sqlite\"", "\"kafka\"", "\"other\""];
const STORE_KIND: &[&str] = &["\"sqlite\"", "\"postgres\"", "\"other\""];
const SOURCE_KIND: &[&str] = &["\"http\"", "\"segment_webhook\"", "\"kafka\"", "\"other\""];
const RATE: &[&str] = &[
    "{ events_per_second = 0 }",
    "{ events_per_second = 5, burst = 1 }",
    "{ events_per_second = 5 }",
    "{ burst = 3 }",
    "{ events_per_second = -1 }",
];
const LIST: &[&str] = &["[]", "[\"a\"]", "[\"short\"]", "[\"pat_12345678\"]", "[1]"];
const MAP: &[&str] = &[
    "{}",
    "{ userId = \"$.a..b\" }",
    "{ userId = \"context.traits.id\" }",
    "{ plan = \"Has Space\" }",
    "{ member_number = \"member\" }",
];
/// Any value, for a field of another type.
const ANY: &[&[&str]] = &[INT, FLOAT, DUR, STR, BOOL, RATE, LIST, MAP];

type Fields = &'static [(&'static str, &'static [&'static str])];
const TOP: Fields = &[
    ("listen", STR),
    ("data_dir", STR),
    ("admin_token", STR),
    ("public_url", STR),
    ("trust_forwarded_for", BOOL),
    ("workers", INT),
    ("sqlite_memory_mb", INT),
    ("log_format", LOG_FORMAT),
    ("log_level", LOG_LEVEL),
];
const SECTIONS: &[(&str, Fields)] = &[
    (
        "limits",
        &[
            ("max_event_bytes", INT),
            ("max_batch_bytes", INT),
            ("max_batch_events", INT),
            ("max_request_bytes", INT),
        ],
    ),
    ("dedupe", &[("window", DUR), ("max_memory_mb", INT)]),
    (
        "log",
        &[
            ("kind", LOG_KIND),
            ("retention", DUR),
            ("max_size_mb", INT),
            ("max_group_events", INT),
            ("retention_interval", DUR),
            ("brokers", STR),
            ("topic", STR),
            ("partitions", INT),
            ("replication", INT),
            ("lease", DUR),
        ],
    ),
    (
        "http",
        &[
            ("idle_timeout", DUR),
            ("body_timeout", DUR),
            ("shutdown_timeout", DUR),
            ("public_metrics", BOOL),
            ("request_log", FLOAT),
        ],
    ),
    (
        "profiles",
        &[
            ("enabled", BOOL),
            ("space", STR),
            ("access_tokens", LIST),
            ("rate_limit", FLOAT),
        ],
    ),
    ("store", &[("kind", STORE_KIND), ("url", STR)]),
    (
        "identity",
        &[
            ("max_merges", INT),
            ("blocked_values", LIST),
            ("custom_traits", MAP),
        ],
    ),
    ("rejected", &[("retention", DUR)]),
    ("console", &[("enabled", BOOL), ("listen", STR)]),
];
const SOURCE: Fields = &[
    ("name", STR),
    ("write_key", STR),
    ("enabled", BOOL),
    ("collect_ip", BOOL),
    ("kind", SOURCE_KIND),
    ("shared_secret", STR),
    ("rate_limit", RATE),
    ("field_mapping", MAP),
];

/// One `key = value` line of `fields`: mostly a value of the field's type, one in
/// eight of any type.
fn line(fields: Fields, (k, pick, other, wrong): (usize, usize, usize, u8)) -> (usize, String) {
    let k = k % fields.len();
    let (name, values) = fields[k];
    let values = if wrong == 0 {
        ANY[other % ANY.len()]
    } else {
        values
    };
    (k, format!("{name} = {}\n", values[pick % values.len()]))
}

/// A `sluice.toml` of known sections and fields, each field at most once.
fn config_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::collection::vec;
    let pick = || (0..16usize, 0..64usize, 0..8usize, 0..8u8);
    (
        vec(pick(), 0..5),
        vec((0..SECTIONS.len(), pick()), 0..10),
        vec(vec(pick(), 0..7), 0..3),
    )
        .prop_map(|(top, sections, sources)| {
            let lines = |fields: Fields, base: &[(usize, String)], picks: Vec<_>| {
                let mut by_key: BTreeMap<usize, String> = base.iter().cloned().collect();
                by_key.extend(picks.into_iter().map(|p| line(fields, p)));
                by_key.into_values().collect::<String>()
            };
            let mut out = lines(TOP, &[], top);
            let mut by_section: BTreeMap<usize, Vec<_>> = BTreeMap::new();
            for (sec, p) in sections {
                by_section.entry(sec).or_default().push(p);
            }
            for (sec, picks) in by_section {
                let (name, fields) = SECTIONS[sec];
                out.push_str(&format!("[{name}]\n{}", lines(fields, &[], picks)));
            }
            // Each source starts valid (its name and key unique); the picks may
            // replace either.
            for (i, picks) in sources.into_iter().enumerate() {
                let base = [
                    (0, format!("name = \"s{i}\"\n")),
                    (1, format!("write_key = \"k{i}\"\n")),
                ];
                out.push_str(&format!("[[sources]]\n{}", lines(SOURCE, &base, picks)));
            }
            out
        })
}

use proptest::strategy::Strategy;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
    /// Any mix of fields and values is accepted or refused with a message naming the
    /// file, never a panic.
    #[test]
    fn any_mix_of_fields_parses_or_is_refused_naming_the_file(text in config_text()) {
        if let Err(e) = parse(&text, "mix.toml") {
            let e = e.to_string();
            proptest::prop_assert!(e.contains("mix.toml"), "{}\n---\n{}", text, e);
        }
    }
}

#[test]
fn http_timeouts_parse_default_and_refuse_zero() {
    let d = parse("", "h.toml").unwrap().http;
    assert_eq!(
        (d.idle_timeout.0, d.body_timeout.0, d.shutdown_timeout.0),
        (
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(10)
        )
    );
    let ok = parse(
        "[http]\nidle_timeout = \"75s\"\nbody_timeout = \"2m\"\nshutdown_timeout = \"25s\"\n",
        "h.toml",
    )
    .unwrap()
    .http;
    assert_eq!(
        (ok.idle_timeout.0, ok.body_timeout.0, ok.shutdown_timeout.0),
        (
            Duration::from_secs(75),
            Duration::from_secs(120),
            Duration::from_secs(25)
        )
    );
    for (text, needle) in [
        ("[http]\nidle_timeout = \"0s\"\n", "http.idle_timeout"),
        ("[http]\nbody_timeout = \"0s\"\n", "http.body_timeout"),
        (
            "[http]\nshutdown_timeout = \"0s\"\n",
            "http.shutdown_timeout",
        ),
        ("[http]\nbody_timeout = \"soon\"\n", "body_timeout"),
        ("[http]\nread_timeout = \"1s\"\n", "read_timeout"),
    ] {
        let e = parse(text, "h.toml").unwrap_err().to_string();
        assert!(e.contains("h.toml") && e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn webhook_sources_need_a_secret_and_valid_paths() {
    let base = "[[sources]]\nname = \"s\"\nwrite_key = \"k\"\n";
    let ok = parse(
        &format!("{base}kind = \"segment_webhook\"\nshared_secret = \"x\"\nfield_mapping = {{ userId = \"$.traits.id\" }}\n"),
        "w.toml",
    )
    .unwrap();
    assert_eq!(ok.sources[0].kind, SourceKind::SegmentWebhook);
    // The runtime settings are built once, at load: the secret and the parsed path.
    let hook = ok.source_settings[0]
        .webhook()
        .expect("a segment_webhook source");
    assert_eq!(hook.shared_secret, "x");
    let event = serde_json::json!({"traits": {"id": "u-7"}});
    assert_eq!(
        hook.user_id
            .as_ref()
            .and_then(|p| p.id_in(&event))
            .as_deref(),
        Some("u-7")
    );
    assert!(hook.anonymous_id.is_none());
    for (extra, needle) in [
        ("kind = \"segment_webhook\"\n", "sources[0].shared_secret"),
        ("kind = \"segment_webhook\"\nshared_secret = \"\"\n", "must not be empty"),
        ("shared_secret = \"x\"\n", "sources[0].kind"),
        ("kind = \"segment_webhook\"\nshared_secret = \"x\"\nfield_mapping = { userId = \"a..b\" }\n", "sources[0].field_mapping.userId"),
        ("kind = \"kafka_maybe\"\n", "kafka_maybe"),
    ] {
        let e = parse(&format!("{base}{extra}"), "w.toml").unwrap_err().to_string();
        assert!(e.contains(needle), "{extra}: {e}");
    }
}

#[test]
fn kafka_sources_are_checked() {
    let base = "[[sources]]\nname = \"pw\"\nwrite_key = \"k\"\nkind = \"kafka\"\n";
    let good = "[sources.kafka]\nbrokers = \"127.0.0.1:19092\"\ntopic = \"t\"\nmapping = { type = \"track\", event = \"Push Delivered\", userId = { \"@path\" = \"$.user\" } }\n";
    let text = format!("{base}{good}");
    match parse(&text, "k.toml") {
        Ok(cfg) => {
            assert_eq!(cfg.sources[0].kind, SourceKind::Kafka);
            // Built once at load, with the mapping compiled and the default group.
            let k = cfg.source_settings[0].kafka().expect("a kafka source");
            assert_eq!(
                (k.topic.as_str(), k.group.as_str()),
                ("t", "sluice-source-pw")
            );
            let event = k.mapping.eval(&serde_json::json!({"user": "u1"})).unwrap();
            assert_eq!(event["userId"], "u1");
        }
        Err(e) => {
            // Only a build without the `kafka` feature refuses it.
            assert!(e.to_string().contains("no Kafka support"), "{e}");
            return;
        }
    }
    for (extra, needle) in [
        ("", "sources[0].kafka"),
        ("[sources.kafka]\nbrokers = \"\"\ntopic = \"t\"\nmapping = { type = \"track\" }\n", "sources[0].kafka.brokers"),
        ("[sources.kafka]\nbrokers = \"b\"\ntopic = \"t\"\nmapping = { userId = { \"@nope\" = 1 } }\n", "sources[0].kafka.mapping.userId"),
        ("[sources.kafka]\nbrokers = \"b\"\ntopic = \"t\"\nmapping = 3\n", "sources[0].kafka.mapping"),
    ] {
        let e = parse(&format!("{base}{extra}"), "k.toml").unwrap_err().to_string();
        assert!(e.contains(needle), "{extra}: {e}");
    }
}

#[test]
fn store_section_is_checked() {
    let ok = parse(
        "[store]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:55432/postgres\"\n",
        "s.toml",
    )
    .unwrap();
    assert_eq!(ok.store.kind, StoreKind::Postgres);
    for (text, needle) in [
        ("[store]\nkind = \"postgres\"\n", "store.url"),
        (
            "[store]\nkind = \"postgres\"\nurl = \"mysql://x\"\n",
            "postgres://",
        ),
        ("[store]\nurl = \"postgres://x\"\n", "only for kind"),
        ("[store]\nkind = \"oracle\"\n", "oracle"),
    ] {
        let e = parse(text, "s.toml").unwrap_err().to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn secrets_from_environment() {
    std::env::set_var("SLUICE_TEST_WK", "from-env");
    let cfg = parse(
        "[[sources]]\nname = \"web\"\nwrite_key = \"${SLUICE_TEST_WK}\"\n",
        "f.toml",
    )
    .unwrap();
    assert_eq!(cfg.sources[0].write_key, "from-env");
    let e = parse("admin_token = \"${SLUICE_TEST_UNSET_VAR}\"\n", "g.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("SLUICE_TEST_UNSET_VAR") && e.contains("admin_token"),
        "{e}"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("h").is_err());
    assert!(parse_duration("5y").is_err());
}

#[test]
fn warehouse_destinations_are_checked_and_kept_apart_from_the_router() {
    let base = "[[sources]]\nname = \"web\"\nwrite_key = \"k\"\n[[destinations]]\nname = \"dw\"\ntype = \"warehouse\"\nsources = [\"web\"]\n";
    let ok = parse(
        &format!("{base}[destinations.settings]\nurl = \"postgres://u@h/db\"\nbatch_rows = 500\n"),
        "w.toml",
    )
    .unwrap();
    assert_eq!(ok.warehouses.len(), 1);
    assert_eq!(ok.warehouses[0].schemas["web"], "web");
    assert_eq!(ok.warehouses[0].batch_rows, 500);
    for (extra, needle) in [
        ("", "destinations[0]: field `settings.url` is required"),
        (
            "[destinations.settings]\nurl = \"mysql://x\"\n",
            "settings.url",
        ),
        (
            "[destinations.settings]\nurl = \"postgres://x\"\nmax_age_s = 0\n",
            "settings.max_age_s",
        ),
    ] {
        let e = parse(&format!("{base}{extra}"), "w.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{extra}: {e}");
    }
    let e = parse(
        &base.replace("[\"web\"]", "[\"app\"]").to_string(),
        "w.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("destinations[0].sources") && e.contains("\"app\""),
        "{e}"
    );
}

#[test]
fn log_settings_parse_and_bad_ones_name_the_field() {
    let ok = parse(
        "log_format = \"json\"\nlog_level = \"warn,sluice_destinations=debug\"\n[http]\nrequest_log = 0.1\n",
        "l.toml",
    )
    .unwrap();
    assert_eq!(ok.log_format, LogFormat::Json);
    assert_eq!(ok.http.request_log, 0.1);
    let d = parse("", "l.toml").unwrap();
    assert_eq!(
        (d.log_format, d.log_level, d.http.request_log),
        (LogFormat::Text, None, 0.0)
    );
    for (text, needle) in [
        ("log_format = \"xml\"\n", "log_format"),
        ("log_level = \"loud[\"\n", "log_level"),
        ("log_level = \" \"\n", "must not be empty"),
        ("[http]\nrequest_log = 1.5\n", "http.request_log"),
        ("[http]\nrequest_log = -0.1\n", "http.request_log"),
        ("[http]\nrequest_log = nan\n", "http.request_log"),
    ] {
        let e = parse(text, "l.toml").unwrap_err().to_string();
        assert!(e.contains("l.toml") && e.contains(needle), "{text}: {e}");
    }
}
