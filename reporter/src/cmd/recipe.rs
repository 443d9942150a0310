//! `tbox-report recipe sign | verify | publish`: the maintainer's side of recipes.
//! None of these needs a volunteer's config: they work with the project's key files and a
//! server URL.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tbox_protocol::{PrivateKey, PublicKey, Recipe, parse_recipe, report_id, verify_recipe};

use crate::cli::{RecipeCommand, RecipePublishArgs, RecipeVerifyArgs};
use crate::{exit, keyfile, trust};

pub fn run(cmd: RecipeCommand) -> anyhow::Result<u8> {
    match cmd {
        RecipeCommand::Sign(a) => sign(&a.recipe, &a.key),
        RecipeCommand::Verify(a) => verify(&a),
        RecipeCommand::Publish(a) => publish(&a),
    }
}

/// `recipe.toml` → `recipe.toml.sig`.
pub(super) fn sig_path(recipe: &Path, given: Option<&PathBuf>) -> PathBuf {
    given.cloned().unwrap_or_else(|| {
        let mut p = recipe.as_os_str().to_owned();
        p.push(".sig");
        PathBuf::from(p)
    })
}

pub(super) fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn summary(r: &Recipe) -> String {
    // Names are the recipe's: no control or bidirectional character reaches the terminal.
    let steps: Vec<String> = r.steps.iter().map(|s| crate::client::printable(&s.name)).collect();
    let l = &r.limits;
    let mut limits = Vec::new();
    if let Some(p) = l.processes {
        limits.push(format!("{p} processes"));
    }
    if let Some(m) = l.memory {
        limits.push(format!("{} of memory", tbox_protocol::human_size(m.as_u64())));
    }
    if let Some(d) = l.disk {
        limits.push(format!("{} of disk", tbox_protocol::human_size(d.as_u64())));
    }
    let limits = if limits.is_empty() { String::new() } else { format!(", asks for at most {}", limits.join(", ")) };
    format!(
        "project {}, version {}, expires {}, repo {}, branches {}, steps {}{}{}{limits}",
        r.project,
        r.version,
        r.expires.to_rfc3339(),
        r.repo,
        r.branches.join(" "),
        steps.join(" → "),
        if r.requires.is_empty() { String::new() } else { format!(", requires {}", r.requires.join(" ")) },
        if r.network { ", needs the network" } else { "" },
    )
}

fn sign(recipe: &Path, key: &Path) -> anyhow::Result<u8> {
    let bytes = read(recipe)?;
    // A recipe every volunteer would refuse is not worth a signature.
    let r = parse_recipe(&bytes).with_context(|| format!("{} cannot be signed", recipe.display()))?;
    if r.expires <= chrono::Utc::now() {
        anyhow::bail!("{}: expires {} is already past; volunteers would refuse it", recipe.display(), r.expires);
    }
    let key = keyfile::load(key)?;
    let signature = key.sign(&bytes);
    let out = sig_path(recipe, None);
    // Exactly what `openssl dgst -sha256 -sign … | base64 -w0` writes: no newline.
    std::fs::write(&out, &signature).with_context(|| format!("cannot write {}", out.display()))?;
    crate::say!("signed {} ({})", recipe.display(), summary(&r));
    crate::say!("key    {}", key.public_key().fingerprint());
    crate::say!("wrote  {}", out.display());
    Ok(exit::OK)
}

/// A public key from a PEM file holding a public or a private key.
pub(super) fn public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    PublicKey::from_pem(&pem)
        .or_else(|_| PrivateKey::from_pem(&pem).map(|k| k.public_key()))
        .with_context(|| format!("{} is not an RSA key in PEM", path.display()))
}

fn verify(args: &RecipeVerifyArgs) -> anyhow::Result<u8> {
    let bytes = read(&args.recipe)?;
    let sig_file = sig_path(&args.recipe, args.sig.as_ref());
    let sig = std::fs::read_to_string(&sig_file).with_context(|| format!("cannot read {}", sig_file.display()))?;
    let key = public_key(&args.key)?;
    let checked = verify_recipe(&bytes, sig.trim(), std::slice::from_ref(&key)).and_then(|(r, _)| {
        let project = args.project.clone().unwrap_or_else(|| r.project.clone());
        r.check(&project, chrono::Utc::now(), &report_id(&bytes), None).map(|()| r)
    });
    match checked {
        Ok(r) => {
            crate::say!("good: {} ({})", args.recipe.display(), summary(&r));
            crate::say!("signed by {}", key.fingerprint());
            Ok(exit::OK)
        }
        Err(tbox_protocol::RecipeError::NotSigned) => {
            eprintln!(
                "tbox-report: {} REFUSED: its signature ({}) does not verify with {} ({})",
                args.recipe.display(),
                sig_file.display(),
                args.key.display(),
                key.fingerprint()
            );
            Ok(exit::REFUSED)
        }
        Err(e) => {
            eprintln!("tbox-report: {} REFUSED: {e}", args.recipe.display());
            Ok(exit::REFUSED)
        }
    }
}

fn publish(args: &RecipePublishArgs) -> anyhow::Result<u8> {
    let bytes = read(&args.recipe)?;
    let r = parse_recipe(&bytes).with_context(|| format!("{} cannot be published", args.recipe.display()))?;
    let sig_file = sig_path(&args.recipe, args.sig.as_ref());
    let sig = std::fs::read_to_string(&sig_file)
        .with_context(|| format!("cannot read {} (sign first: tbox-report recipe sign)", sig_file.display()))?;
    let url = format!("{}/api/v1/projects/{}/recipe", crate::client::base_url(&args.server), r.project);
    let cut_off = cuts_off(&r, current(&url).as_ref(), chrono::Utc::now());
    if !cut_off.is_empty() && !args.yes {
        eprintln!("tbox-report: publishing {} would cut volunteers off:", args.recipe.display());
        for why in &cut_off {
            eprintln!("  - {why}");
        }
        eprintln!("tbox-report: nothing was sent; pass --yes to publish it anyway");
        return Ok(exit::USAGE);
    }
    let answer = trust::agent()
        .put(&url)
        .header("Content-Type", "application/toml")
        .header("Tbox-Signature", sig.trim())
        .send(&bytes[..]);
    send_outcome(&url, answer, |v| {
        crate::say!("published {} ({})", args.recipe.display(), summary(&r));
        crate::say!("signed by {}", crate::client::printable(v["key"].as_str().unwrap_or("?")));
        crate::say!("served at {}", crate::client::printable(v["url"].as_str().unwrap_or(&url)));
    })
}

/// The recipe the server serves now, if it has one that reads.
fn current(url: &str) -> Option<Recipe> {
    let a = trust::get(&trust::agent(), url, tbox_protocol::MAX_RECIPE_BYTES as u64).ok()?;
    (a.status == 200).then(|| parse_recipe(&a.body).ok()).flatten()
}

/// What publishing `new` over `old` would do to the volunteers who joined: each a sentence.
fn cuts_off(new: &Recipe, old: Option<&Recipe>, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let mut said = Vec::new();
    if let Some(old) = old {
        if old.repo != new.repo {
            said.push(format!(
                "the source moves from {} to {}: every joined volunteer refuses it (their config names the old \
                 repo) until they leave and join again",
                old.repo, new.repo
            ));
        }
        for r in new.requires.iter().filter(|r| !old.requires.contains(r)) {
            said.push(format!(
                "it newly requires {r:?}: volunteers whose machines do not declare it stop building {}",
                new.project
            ));
        }
    }
    if new.expires <= now + chrono::TimeDelta::days(1) {
        said.push(format!(
            "it expires within a day ({}): after that every volunteer refuses it until a newer one is published",
            new.expires.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    said
}

/// Prints what a server said about a PUT or POST; the exit code follows the status.
pub(super) fn send_outcome(
    url: &str,
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    done: impl FnOnce(&serde_json::Value),
) -> anyhow::Result<u8> {
    let base = crate::client::base_url(url);
    let mut resp = match answer {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tbox-report: cannot reach {url}: {}", crate::client::unreachable(&base, &e));
            return Ok(exit::SPOOLED);
        }
    };
    let status = resp.status().as_u16();
    let content_type = crate::client::content_type(resp.headers());
    let text = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match (status, json["message"].as_str()) {
        (200..=299, _) if json.is_object() => {
            done(&json);
            Ok(exit::OK)
        }
        (400..=499, Some(message)) => {
            eprintln!("tbox-report: the server refused it ({status}): {}", crate::client::printable(message));
            Ok(exit::REJECTED)
        }
        _ => {
            eprintln!(
                "tbox-report: {}; nothing was changed",
                crate::client::not_tbox(&base, status, content_type.as_deref())
            );
            Ok(exit::SPOOLED)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn recipe(repo: &str, requires: &str, expires: &str) -> Recipe {
        let text = format!(
            "format = \"tbox-recipe/1\"\nproject = \"demo\"\nrepo = \"{repo}\"\nbranches = [\"main\"]\nversion = 1\n\
             expires = \"{expires}\"\nrequires = [{requires}]\n[[step]]\nname = \"b\"\nrun = \"make\"\n"
        );
        parse_recipe(text.as_bytes()).unwrap()
    }

    #[test]
    fn what_cuts_volunteers_off_is_said() {
        let now = chrono::Utc::now();
        let later = (now + chrono::TimeDelta::days(30)).to_rfc3339();
        let soon = (now + chrono::TimeDelta::hours(5)).to_rfc3339();
        let old = recipe("https://a.example/demo.git", "\"docker\"", &later);
        assert!(cuts_off(&old, Some(&old), now).is_empty(), "the same recipe again");
        assert!(cuts_off(&recipe("https://a.example/demo.git", "", &later), Some(&old), now).is_empty(), "fewer needs");
        let said = cuts_off(&recipe("https://b.example/demo.git", "\"docker\", \"gpu\"", &soon), Some(&old), now);
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[0].contains("moves from https://a.example/demo.git to https://b.example/demo.git"));
        assert!(said[1].contains("newly requires \"gpu\""));
        assert!(said[2].contains("expires within a day"));
        assert_eq!(cuts_off(&recipe("https://b.example/demo.git", "\"gpu\"", &later), None, now), Vec::<String>::new());
    }
}
