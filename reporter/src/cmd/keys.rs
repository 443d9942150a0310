//! `tbox-report keys sign | publish`: the maintainer's side of a project's key list
//! (`tbox-keys/1`), the signed document that says which keys sign for the project and which
//! never will again. Like recipes, it is signed offline and the server only mirrors it.

use std::path::Path;

use anyhow::{Context as _, bail};
use chrono::{SecondsFormat, TimeDelta, Utc};
use tbox_protocol::{KEYS_FORMAT, KeyList, MAX_EXPIRY_DAYS, is_fingerprint, parse_key_list};

use super::recipe::{public_key, read, send_outcome, sig_path};
use crate::cli::{KeysCommand, KeysPublishArgs, KeysSignArgs};
use crate::{exit, keyfile, trust};

pub fn run(cmd: KeysCommand) -> anyhow::Result<u8> {
    match cmd {
        KeysCommand::Sign(a) => sign(&a),
        KeysCommand::Publish(a) => publish(&a),
    }
}

fn summary(l: &KeyList) -> String {
    let keys: Vec<&str> = l.keys.iter().map(|(fp, _)| fp.as_str()).collect();
    format!(
        "project {}, version {}, expires {}, keys {}{}",
        l.project,
        l.version,
        l.expires.to_rfc3339_opts(SecondsFormat::Secs, true),
        keys.join(" "),
        if l.revoked.is_empty() { String::new() } else { format!(", revoked {}", l.revoked.join(" ")) }
    )
}

fn sign(args: &KeysSignArgs) -> anyhow::Result<u8> {
    let key = keyfile::load(&args.key)?;
    let signer = key.public_key();
    let editing = args.project.is_some() || !args.add.is_empty() || !args.revoke.is_empty() || args.expires.is_some();
    if editing {
        let text = next_version(args, &signer)?;
        write_new(&args.file, &text)?;
    }
    let bytes = read(&args.file)?;
    let list = parse_key_list(&bytes).with_context(|| format!("{} cannot be signed", args.file.display()))?;
    let now = Utc::now();
    if list.expires <= now || list.expires > now + TimeDelta::days(MAX_EXPIRY_DAYS) {
        bail!(
            "{}: expires {} must be in the next {MAX_EXPIRY_DAYS} days, or volunteers refuse it (--expires 365d \
             writes a new one)",
            args.file.display(),
            list.expires
        );
    }
    let signature = key.sign(&bytes);
    let out = sig_path(&args.file, None);
    std::fs::write(&out, &signature).with_context(|| format!("cannot write {}", out.display()))?;
    crate::say!("signed {} ({})", args.file.display(), summary(&list));
    crate::say!("key    {}", signer.fingerprint());
    crate::say!("wrote  {}", out.display());
    if !list.lists(&signer.fingerprint()) {
        // A handover: volunteers who pinned the old key follow it; those who will pin the new
        // key need a version the new key signed.
        crate::say!(
            "note: the signing key is not in force in this version: volunteers who pin a key it lists need a \
             version that key signed (`tbox-report keys sign {} --key NEW.pem --expires 365d`, then publish it); \
             rotating is easier in three steps, see `tbox-report keys sign --help`",
            args.file.display()
        );
    }
    Ok(exit::OK)
}

/// The text of the list to write: the next version of the file, or a first one.
fn next_version(args: &KeysSignArgs, signer: &tbox_protocol::PublicKey) -> anyhow::Result<String> {
    let base = match std::fs::read(&args.file) {
        Ok(bytes) => {
            Some(parse_key_list(&bytes).with_context(|| format!("{} is not a key list", args.file.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", args.file.display())),
    };
    let (project, version, mut keys, mut revoked) = match (&base, &args.project) {
        (Some(b), Some(p)) if *p != b.project => {
            bail!("{} is the key list of project {}, not {p}", args.file.display(), b.project)
        }
        (Some(b), _) => (
            b.project.clone(),
            b.version.checked_add(1).context("the version cannot grow any more")?,
            b.keys.iter().map(|(fp, k)| (fp.clone(), k.clone())).collect::<Vec<_>>(),
            b.revoked.clone(),
        ),
        (None, Some(p)) => {
            tbox_protocol::validate_name("--project", p, 64)?;
            (p.clone(), 1, vec![(signer.fingerprint(), signer.clone())], Vec::new())
        }
        (None, None) => bail!(
            "{} does not exist: give --project P to write a first key list (or fetch the current one from \
             SERVER/api/v1/projects/P/keys)",
            args.file.display()
        ),
    };
    for path in &args.add {
        let k = public_key(path)?;
        let fp = k.fingerprint();
        if revoked.contains(&fp) {
            bail!("{} ({fp}) was revoked: a revoked key never comes back", path.display());
        }
        if !keys.iter().any(|(f, _)| *f == fp) {
            keys.push((fp, k));
        }
    }
    for fp in &args.revoke {
        if !is_fingerprint(fp) {
            bail!("--revoke {fp:?}: a key fingerprint is SHA256: and 64 hex digits");
        }
        keys.retain(|(f, _)| f != fp);
        if !revoked.contains(fp) {
            revoked.push(fp.clone());
        }
    }
    if keys.is_empty() {
        bail!("no key would be left in force; --add the new key too");
    }
    let span = match &args.expires {
        Some(d) => {
            tbox_protocol::parse_duration(d).with_context(|| format!("--expires {d:?} is not a duration like 365d"))?
        }
        None => std::time::Duration::from_secs(365 * 86400),
    };
    let span = TimeDelta::from_std(span).unwrap_or(TimeDelta::MAX);
    if span > TimeDelta::days(MAX_EXPIRY_DAYS) {
        bail!("--expires may be at most {MAX_EXPIRY_DAYS}d: volunteers refuse a key list that lives longer");
    }
    let expires = (Utc::now() + span).to_rfc3339_opts(SecondsFormat::Secs, true);
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut text = format!(
        "# The keys of project {project}: signed with `tbox-report keys sign`, served by every mirror.\n\
         format  = \"{KEYS_FORMAT}\"\nproject = {}\nversion = {version}\nexpires = \"{expires}\"\nkeys = [\n",
        quoted(&project)
    );
    for (fp, k) in &keys {
        text.push_str(&format!("# {fp}\n\"\"\"\n{}\"\"\",\n", k.to_pem()));
    }
    text.push_str("]\nrevoked = [\n");
    for fp in &revoked {
        text.push_str(&format!("  {},\n", quoted(fp)));
    }
    text.push_str("]\n");
    Ok(text)
}

fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

fn publish(args: &KeysPublishArgs) -> anyhow::Result<u8> {
    let bytes = read(&args.file)?;
    let list = parse_key_list(&bytes).with_context(|| format!("{} cannot be published", args.file.display()))?;
    // Volunteers refuse a recipe signed by a key out of force: say so before cutting them off.
    let server = &crate::client::base_url(&args.server);
    let recipe_url = format!("{server}/api/v1/projects/{}/recipe", list.project);
    if let Ok(a) = trust::get(&trust::agent(), &recipe_url, tbox_protocol::MAX_RECIPE_BYTES as u64 + 1)
        && a.status == 200
        && let Some(signer) = a.key.filter(|k| is_fingerprint(k) && !list.lists(k))
        && !args.yes
    {
        let what = if list.revoked.contains(&signer) { "revokes" } else { "does not list" };
        eprintln!(
            "tbox-report: the project's current recipe is signed by {signer}, which this key list {what}: every \
             volunteer would refuse it (and report an exception) until a recipe signed by a key in force is \
             published. Publish that recipe first (sign it with a key this list keeps), or pass --yes to publish \
             the key list anyway. Nothing was published."
        );
        return Ok(exit::USAGE);
    }
    let sig_file = sig_path(&args.file, args.sig.as_ref());
    let sig = std::fs::read_to_string(&sig_file)
        .with_context(|| format!("cannot read {} (sign first: tbox-report keys sign)", sig_file.display()))?;
    let url = format!("{}/api/v1/projects/{}/keys", crate::client::base_url(&args.server), list.project);
    let answer = trust::agent()
        .put(&url)
        .header("Content-Type", "application/toml")
        .header("Tbox-Signature", sig.trim())
        .send(&bytes[..]);
    send_outcome(&url, answer, |v| {
        crate::say!("published {} ({})", args.file.display(), summary(&list));
        crate::say!("signed by {}", crate::client::printable(v["key"].as_str().unwrap_or("?")));
        crate::say!("served at {}", crate::client::printable(v["url"].as_str().unwrap_or(&url)));
    })
}
