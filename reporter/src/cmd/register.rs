//! `tbox-report register`: self-registration, signed with the key being registered.

use serde_json::json;

use crate::cli::RegisterArgs;
use crate::client::Sent;
use crate::exit;

pub fn run(args: &RegisterArgs) -> anyhow::Result<u8> {
    let (config, client) = super::load(&args.common)?;
    let key = crate::keyfile::load(&config.key_path())?;
    let body = serde_json::to_vec(&json!({
        "name": config.builder,
        "owner": args.owner.as_ref().or(config.owner.as_ref()),
        "projects": args.projects,
        "public_key": key.public_key().to_pem(),
        "description": args.description,
    }))?;
    match client.register(&body) {
        Sent::Delivered(v) => {
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
