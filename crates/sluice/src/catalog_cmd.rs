//! `sluice catalog` (list the built-in destination types) and `sluice catalog show NAME`
//! (a type's settings, actions, fields, defaults and presets).

use anyhow::{bail, Result};
use sluice_destinations::catalog;

#[derive(clap::Subcommand)]
pub enum CatalogCommand {
    /// Settings, actions, fields, defaults and presets of one destination type.
    Show { name: String },
}

pub fn run(cmd: Option<CatalogCommand>) -> Result<()> {
    let entries = catalog::load()?;
    match cmd {
        None => {
            println!(
                "{:<18} {:<28} {:<22} actions",
                "type", "name", "segment slug"
            );
            println!(
                "{:<18} {:<28} {:<22} -",
                "webhook", "Webhooks (classic)", "webhooks"
            );
            for e in entries.values() {
                println!(
                    "{:<18} {:<28} {:<22} {}",
                    e.id,
                    e.name,
                    e.segment_slug.as_deref().unwrap_or("-"),
                    e.actions.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        Some(CatalogCommand::Show { name }) => {
            let Some(e) = entries.get(&name) else {
                let known: Vec<&str> = entries.keys().map(String::as_str).collect();
                bail!(
                    "no catalog destination {name:?} (known: {})",
                    known.join(", ")
                );
            };
            println!("{} — {}", e.id, e.name);
            if !e.description.is_empty() {
                println!("{}", e.description);
            }
            println!("\nsettings (plus endpoint_override, accepted by every catalog destination):");
            for (k, s) in &e.settings {
                println!(
                    "  {k:<20} {:<9}{}{}{}  {}",
                    format!("{:?}", s.ty).to_lowercase(),
                    if s.required { " required" } else { "" },
                    if s.secret { " secret" } else { "" },
                    s.default
                        .as_ref()
                        .map(|d| format!(" default {d}"))
                        .unwrap_or_default(),
                    s.description
                );
            }
            for (slug, a) in &e.actions {
                println!("\naction {slug} — {}", a.title);
                println!("  default subscription: {}", a.default_subscription);
                for (key, spec) in &a.fields {
                    let default = a
                        .defaults
                        .get(key)
                        .map(|d| format!(" default {d}"))
                        .unwrap_or_default();
                    let choices = a
                        .choices
                        .get(key)
                        .map(|c| format!(" one of {}", serde_json::Value::from(c.clone())))
                        .unwrap_or_default();
                    println!(
                        "  {key:<20} {:<9}{}{}{default}{choices}  {}",
                        format!("{:?}", spec.ty).to_lowercase(),
                        if spec.required { " required" } else { "" },
                        if spec.multiple { " list" } else { "" },
                        a.field_descriptions
                            .get(key)
                            .map(String::as_str)
                            .unwrap_or("")
                    );
                }
            }
            println!(
                "\ndeletion hook: {}",
                if e.delete.is_some() {
                    "yes (a user deletion sends a request)"
                } else {
                    "none"
                }
            );
            println!("\npresets (enabled when a configuration lists no actions):");
            if e.presets.is_empty() {
                println!("  none: list [[destinations.actions]]");
            }
            for p in &e.presets {
                let own = if p.mapping.is_some() {
                    " (with its own mapping)"
                } else {
                    ""
                };
                println!("  {}: {}{own}", p.action, p.subscription_text);
            }
        }
    }
    Ok(())
}
