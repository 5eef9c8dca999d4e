//! `sluice replay`: asks a running server to re-deliver to one destination, either its
//! dead letters (all, or filtered) or a window of the event log. The server owns the log
//! and the state store, so this is a client of the admin API.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The destination to re-deliver to.
    destination: String,
    /// Replay dead letters (the default when no --from is given).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    dead_letters: bool,
    /// Dead letters: failed at or after (ISO-8601 or epoch ms).
    #[arg(long)]
    since: Option<String>,
    /// Dead letters: failed before.
    #[arg(long)]
    until: Option<String>,
    /// Dead letters: whose last answer had this HTTP status.
    #[arg(long)]
    status: Option<u16>,
    /// Dead letters: of this user (userId, else anonymousId).
    #[arg(long)]
    user: Option<String>,
    /// Log window: events received at or after this time.
    #[arg(long, conflicts_with_all = ["since", "until", "status", "user"])]
    from: Option<String>,
    /// Log window: events received before this time (default: now).
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// The server's base URL.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8088")]
    url: String,
    /// The admin token.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN")]
    token: String,
}

pub fn run(args: ReplayArgs) -> Result<()> {
    let base = args.url.trim_end_matches('/');
    let dest = &args.destination;
    let (path, body) = match &args.from {
        Some(from) => {
            let mut b = json!({ "from": from });
            if let Some(to) = &args.to {
                b["to"] = json!(to);
            }
            (format!("/admin/v1/destinations/{dest}/replay"), b)
        }
        None => {
            let mut b = json!({});
            for (k, v) in [
                ("since", &args.since),
                ("until", &args.until),
                ("user", &args.user),
            ] {
                if let Some(v) = v {
                    b[k] = json!(v);
                }
            }
            if let Some(s) = args.status {
                b["status"] = json!(s);
            }
            (
                format!("/admin/v1/destinations/{dest}/dead-letters/replay"),
                b,
            )
        }
    };
    let url = format!("{base}{path}");
    let result = ureq::post(&url)
        .set("Authorization", &format!("Bearer {}", args.token))
        .send_json(body);
    let (status, reply) = match result {
        Ok(r) => (r.status(), r.into_json::<Value>().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json::<Value>().unwrap_or(Value::Null)),
        Err(e) => return Err(e).with_context(|| format!("cannot reach {base}")),
    };
    if !(200..300).contains(&status) {
        bail!(
            "the server refused (HTTP {status}): {}",
            reply["message"].as_str().unwrap_or("no message")
        );
    }
    match &args.from {
        Some(_) => println!(
            "replay {} started for destination {dest}: offsets {} to {} (follow it at {base}/admin/v1/destinations/{dest}/replays)",
            reply["id"].as_str().unwrap_or("?"),
            reply["start_offset"],
            reply["end_offset"]
        ),
        None => println!(
            "{} dead letter(s) of destination {dest} are back in its retry queue",
            reply["replayed"]
        ),
    }
    Ok(())
}
