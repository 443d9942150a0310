//! `tbox-report request`: a maintainer asks volunteers' machines for builds. The body is
//! signed with the project's key, as a recipe is; the server answers with the request's number.

use serde_json::json;

use crate::cli::RequestArgs;
use crate::{exit, keyfile, trust};

pub fn run(args: &RequestArgs) -> anyhow::Result<u8> {
    // Checked here too, so that a typo is a usage error and not a server's 422.
    if let Err(e) = tbox_protocol::BranchName::parse(&args.branch) {
        eprintln!("tbox-report: --branch {:?}: {}", args.branch, e.message);
        return Ok(exit::USAGE);
    }
    if let Some(Err(e)) = args.revision.as_deref().map(tbox_protocol::Revision::parse) {
        eprintln!("tbox-report: --revision: {}", e.message);
        return Ok(exit::USAGE);
    }
    let key = keyfile::load(&args.key)?;
    let deadline = match &args.deadline {
        Some(d) => {
            let Some(span) = tbox_protocol::parse_duration(d) else {
                eprintln!("tbox-report: --deadline {d:?} is not a duration like 24h or 3d");
                return Ok(exit::USAGE);
            };
            let span = chrono::TimeDelta::from_std(span).unwrap_or(chrono::TimeDelta::MAX);
            Some((chrono::Utc::now() + span).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        }
        None => None,
    };
    // The nonce makes each request its own: the same body sent again (a retry, a replay) is the
    // same request, not a second one.
    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    // `project` and `created_at` are signed too: a volunteer obeys a request only for the
    // project it builds and for 30 days at most, so a copy cannot be replayed later or elsewhere.
    let body = serde_json::to_vec(&json!({
        "project": args.project,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "branch": args.branch,
        "revision": args.revision,
        "builders": args.builders,
        "requires": args.requires,
        "deadline": deadline,
        "nonce": tbox_protocol::hex(&nonce),
        "quorum": args.quorum,
        "distinct": args.distinct,
    }))?;
    let url = format!("{}/api/v1/projects/{}/requests", crate::client::base_url(&args.server), args.project);
    let answer = trust::agent()
        .post(&url)
        .header("Content-Type", "application/json")
        .header("Tbox-Signature", &key.sign(&body))
        .send(&body[..]);
    super::recipe::send_outcome(&url, answer, |v| {
        crate::say!(
            "request {} for {}: {} builder(s) on {}{}{}{}",
            v["id"],
            args.project,
            args.builders,
            args.branch,
            args.revision.as_deref().map(|r| format!(" at {r}")).unwrap_or_default(),
            deadline.as_deref().map(|d| format!(", by {d}")).unwrap_or_default(),
            args.quorum.map(|k| format!(", {k} of distinct {}s must agree", args.distinct)).unwrap_or_default()
        );
        crate::say!("follow it at {}", crate::client::printable(v["url"].as_str().unwrap_or(&url)));
    })
}
