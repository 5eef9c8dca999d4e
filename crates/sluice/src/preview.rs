//! `sluice preview --config FILE --destination NAME --event FILE`: what one event would
//! become at one destination of a config file — for every enabled action, whether its
//! subscription matched and the exact requests, or why nothing would be sent — offline,
//! without a server and without sending anything.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

#[derive(clap::Args)]
pub struct PreviewArgs {
    /// The config file (sluice.toml).
    #[arg(long, short, default_value = "sluice.toml", env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// The destination's name.
    #[arg(long)]
    destination: String,
    /// A file holding the event as JSON ("-": standard input).
    #[arg(long)]
    event: PathBuf,
}

pub fn run(args: PreviewArgs) -> Result<()> {
    let cfg = crate::config::load(&args.config)?;
    let text = if args.event.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("cannot read the event from standard input")?
    } else {
        std::fs::read_to_string(&args.event)
            .with_context(|| format!("cannot read the event file {}", args.event.display()))?
    };
    let event: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("the event file {} is not JSON", args.event.display()))?;
    if !event.is_object() {
        return Err(anyhow!("the event must be a JSON object"));
    }
    let dest = cfg
        .destinations
        .iter()
        .find(|d| d.name == args.destination)
        .ok_or_else(|| {
            let names: Vec<&str> = cfg.destinations.iter().map(|d| d.name.as_str()).collect();
            anyhow!(
                "no destination named {:?} in {} (destinations: {})",
                args.destination,
                args.config.display(),
                names.join(", ")
            )
        })?;
    let sources: Vec<&str> = if cfg.sources.is_empty() {
        vec!["default"]
    } else {
        cfg.sources.iter().map(|s| s.name.as_str()).collect()
    };
    let validated = dest.validate(&sources)?;
    let report = sluice_destinations::router::preview_destination(&validated, &event);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
