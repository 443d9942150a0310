//! `tbox-report register`: self-registration, signed with the key being registered.

use serde_json::json;

use anyhow::Context as _;

use crate::cli::RegisterArgs;
use crate::client::{Client, Sent};
use crate::{config, exit};

pub fn run(args: &RegisterArgs) -> anyhow::Result<u8> {
    let (_, sites) = super::load_sites(&args.common)?;
    // The server of the projects named, when the config builds them; else the top-level one.
    let of = |name: &String| sites.iter().position(|(s, _)| s.projects.iter().any(|p| &p.name == name));
    let mut at: Vec<usize> = args.projects.iter().filter_map(of).collect();
    at.dedup();
    if at.len() > 1 {
        anyhow::bail!("these projects are built for different servers: register for each server's projects apart");
    }
    let (mut config, mut client) = sites.into_iter().nth(at.first().copied().unwrap_or(0)).context("no server")?;
    let key = crate::keyfile::load(&config.key_path())?;
    let renamed = args.builder.as_ref().filter(|b| **b != config.builder);
    if let Some(name) = renamed {
        tbox_protocol::validate_name("builder", name, 64)?;
        config.builder.clone_from(name);
        client = Client::new(&config.server, name, key.clone());
    }
    let body = serde_json::to_vec(&json!({
        "name": config.builder,
        "owner": args.owner.as_ref().or(config.owner.as_ref()),
        "projects": args.projects,
        "public_key": key.public_key().to_pem(),
        "description": args.description,
    }))?;
    match client.register(&body) {
        Sent::Delivered(v) => {
            if renamed.is_some() {
                let path = config::config_path(args.common.config.as_deref());
                super::join::set_builder(&path, &config.server, &config.builder)
                    .with_context(|| format!("registered as {}, but the config still names another", config.builder))?;
                crate::say!("{} now reports as builder {}", path.display(), config.builder);
            }
            let status = crate::client::printable(v["status"].as_str().unwrap_or("?"));
            crate::say!("builder {} is registered for {}: status {status}", config.builder, args.projects.join(", "));
            crate::say!("key fingerprint {}", key.public_key().fingerprint());
            if status == "pending" {
                crate::say!(
                    "an administrator of {} must now run: tbox-server builder approve {}",
                    config.server,
                    config.builder
                );
            }
            Ok(exit::OK)
        }
        Sent::Rejected { status, message } => {
            eprintln!("tbox-report: registration refused ({status}): {message}");
            Ok(exit::REJECTED)
        }
        Sent::Unreachable(e) => anyhow::bail!("cannot reach {}: {e}", config.server),
        Sent::NotTbox(e) => anyhow::bail!("{e}; check `server` in the config"),
    }
}
