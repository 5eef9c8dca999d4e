//! `[[sources]]`: each source's section, checked and turned into the runtime
//! [`SourceSettings`] once (a Kafka source's mapping is compiled here, and only here).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Result;
use serde::Deserialize;
use sluice_ingest::sources::kafka::KafkaSource;
use sluice_ingest::sources::webhook::{FieldPath, WebhookSource};
use sluice_ingest::{RateLimit, SourceSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub write_key: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub collect_ip: bool,
    pub rate_limit: Option<RateLimitConfig>,
    /// `http` (the Tracking API; default) or `segment_webhook` (also accepts what a
    /// Webhooks destination posts to `/v1/webhooks/{name}`).
    #[serde(default)]
    pub kind: SourceKind,
    /// `segment_webhook`: the destination's shared secret; `X-Signature` is checked.
    pub shared_secret: Option<String>,
    /// `segment_webhook`: where the user id and anonymous id are in the posted events.
    #[serde(default)]
    pub field_mapping: Option<FieldMappingConfig>,
    /// `kafka`: the topic and how its messages become events.
    #[serde(default)]
    pub kafka: Option<KafkaSourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    pub brokers: String,
    pub topic: String,
    /// Consumer group (default `sluice-source-<name>`).
    pub group: Option<String>,
    /// Extra librdkafka client settings.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// A mapping-kit object evaluated against each message (JSON): the event.
    pub mapping: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    #[default]
    Http,
    SegmentWebhook,
    Kafka,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMappingConfig {
    /// A path like `traits.customer_id` (or `$.traits.customer_id`) read as `userId`.
    #[serde(rename = "userId", alias = "user_id")]
    pub user_id: Option<String>,
    #[serde(rename = "anonymousId", alias = "anonymous_id")]
    pub anonymous_id: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub events_per_second: f64,
    pub burst: Option<f64>,
}

/// Checks every source and builds its runtime settings; `err(field, why)` makes the
/// error that names the file and the field.
pub(super) fn settings(
    sources: &[SourceConfig],
    err: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<Vec<SourceSettings>> {
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let mut out = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        let valid_name = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(err(
                &format!("sources[{i}].name"),
                format!("must be 1-64 letters, digits, '-' or '_', not {:?}", s.name),
            ));
        }
        if !names.insert(&s.name) {
            return Err(err(
                &format!("sources[{i}].name"),
                format!("repeats the source name {:?}", s.name),
            ));
        }
        if s.write_key.is_empty() || s.write_key.contains(':') {
            return Err(err(
                &format!("sources[{i}].write_key"),
                "must be non-empty and contain no ':'".into(),
            ));
        }
        if !keys.insert(&s.write_key) {
            return Err(err(
                &format!("sources[{i}].write_key"),
                "is already used by another source".into(),
            ));
        }
        let field = |name: &str| format!("sources[{i}].{name}");
        match (s.kind, &s.shared_secret, &s.field_mapping) {
            (SourceKind::SegmentWebhook, None, _) => {
                return Err(err(
                    &field("shared_secret"),
                    "is required for a segment_webhook source (it checks X-Signature)".into(),
                ))
            }
            (SourceKind::SegmentWebhook, Some(secret), _) if secret.is_empty() => {
                return Err(err(&field("shared_secret"), "must not be empty".into()))
            }
            (SourceKind::Http | SourceKind::Kafka, Some(_), _)
            | (SourceKind::Http | SourceKind::Kafka, _, Some(_)) => {
                return Err(err(
                    &field("kind"),
                    "must be \"segment_webhook\" to use shared_secret or field_mapping".into(),
                ))
            }
            _ => {}
        }
        let kafka = match (s.kind, &s.kafka) {
            (SourceKind::Kafka, None) => {
                return Err(err(
                    &field("kafka"),
                    "is required for a kafka source: { brokers, topic, mapping }".into(),
                ))
            }
            (SourceKind::Kafka, Some(k)) => Some(kafka_source(&s.name, k, &field, err)?),
            (_, Some(_)) => {
                return Err(err(
                    &field("kind"),
                    "must be \"kafka\" to use a kafka table".into(),
                ))
            }
            _ => None,
        };
        let mut paths = [None, None];
        if let Some(m) = &s.field_mapping {
            for (slot, (name, path)) in paths
                .iter_mut()
                .zip([("userId", &m.user_id), ("anonymousId", &m.anonymous_id)])
            {
                if let Some(p) = path {
                    let parsed = FieldPath::parse(p).map_err(|why| {
                        err(&field(&format!("field_mapping.{name}")), why.to_string())
                    })?;
                    *slot = Some(parsed);
                }
            }
        }
        if let Some(r) = &s.rate_limit {
            let rate_ok = r.events_per_second.is_finite() && r.events_per_second > 0.0;
            let burst_ok = r.burst.is_none_or(|b| b.is_finite() && b >= 1.0);
            if !rate_ok || !burst_ok {
                return Err(err(
                    &field("rate_limit"),
                    "needs events_per_second > 0 and burst >= 1".into(),
                ));
            }
        }
        let [user_id, anonymous_id] = paths;
        let kind = match (s.kind, kafka) {
            (SourceKind::SegmentWebhook, _) => {
                sluice_ingest::SourceKind::SegmentWebhook(WebhookSource {
                    shared_secret: s.shared_secret.clone().unwrap_or_default(),
                    user_id,
                    anonymous_id,
                })
            }
            (SourceKind::Kafka, Some(k)) => sluice_ingest::SourceKind::Kafka(k),
            _ => sluice_ingest::SourceKind::Http,
        };
        out.push(SourceSettings {
            name: s.name.clone(),
            write_key: s.write_key.clone(),
            enabled: s.enabled,
            collect_ip: s.collect_ip,
            rate_limit: s.rate_limit.as_ref().map(|r| RateLimit {
                per_second: r.events_per_second,
                burst: r.burst.unwrap_or(r.events_per_second.max(1.0)),
            }),
            kind,
            previous_keys: Vec::new(),
        });
    }
    Ok(out)
}

/// A `kafka` source's table, checked, with its mapping compiled.
fn kafka_source(
    source: &str,
    k: &KafkaSourceConfig,
    field: &dyn Fn(&str) -> String,
    err: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<KafkaSource> {
    if !sluice_ingest::sources::kafka::SUPPORTED {
        return Err(err(
            &field("kind"),
            "is \"kafka\", but this build has no Kafka support (cargo feature `kafka`)".into(),
        ));
    }
    for (name, v) in [("brokers", &k.brokers), ("topic", &k.topic)] {
        if v.trim().is_empty() {
            return Err(err(
                &field(&format!("kafka.{name}")),
                "must not be empty".into(),
            ));
        }
    }
    if !k.mapping.is_object() {
        return Err(err(
            &field("kafka.mapping"),
            "must be a table: the event, with mapping-kit directives".into(),
        ));
    }
    let mapping = sluice_mapping::Mapping::compile(&k.mapping).map_err(|e| {
        err(
            &field(&format!("kafka.mapping.{}", e.at)),
            e.message.clone(),
        )
    })?;
    Ok(KafkaSource {
        brokers: k.brokers.clone(),
        topic: k.topic.clone(),
        group: k
            .group
            .clone()
            .unwrap_or_else(|| format!("sluice-source-{source}")),
        options: k.options.clone(),
        mapping: Arc::new(mapping),
    })
}
