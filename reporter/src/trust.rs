//! The volunteer's side of recipes: fetch a project's recipe from a server it does not trust,
//! and accept it only if a key the volunteer pinned (or one reached from the pin by the
//! project's own rotation signatures) signed these exact bytes, for this project, unexpired,
//! and not older than what already ran here.
//!
//! The last good recipe is kept under the state directory, so a server outage does not stop
//! builds while that recipe is valid; what ran last is remembered there too (rollbacks).

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tbox_protocol::{PublicKey, Recipe, endorsement_message, report_id, verify_recipe};

use crate::config;

/// One entry of `GET /api/v1/projects/{p}/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyEntry {
    pub fingerprint: String,
    pub public_key: String,
    #[serde(default)]
    pub endorsed_by: Option<String>,
    #[serde(default)]
    pub endorsement: Option<String>,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Deserialize)]
struct KeyList {
    keys: Vec<KeyEntry>,
}

/// A key this volunteer trusts for a project, and how it came to.
#[derive(Debug, Clone)]
pub struct Trusted {
    pub fingerprint: String,
    pub key: PublicKey,
}

/// The keys trusted from `pin`: the pinned key itself and the keys this machine reached from it
/// before (`known`, kept locally by [`record_run`]), then every key endorsed (a signature over
/// [`endorsement_message`]) by a key already trusted. Revoked keys are neither trusted nor
/// followed; a key reached earlier stays trusted when the key that endorsed it is revoked later
/// (a project retiring its old key after a rotation), unless it is revoked itself.
///
/// The entries come from the server, so nothing in them is believed without a check: a key's
/// PEM must hash to its fingerprint, and an endorsement must verify.
pub fn follow_chain(
    project: &str,
    pin: &str,
    known: &[KeyEntry],
    entries: &[KeyEntry],
) -> Result<Vec<Trusted>, String> {
    let genuine = |e: &KeyEntry| -> Option<PublicKey> {
        PublicKey::from_pem(&e.public_key).ok().filter(|k| k.fingerprint() == e.fingerprint)
    };
    let revoked = |fp: &str| entries.iter().any(|e| e.fingerprint == fp && e.revoked);
    let mut trusted: Vec<Trusted> = Vec::new();
    let starts = entries.iter().filter(|e| e.fingerprint == pin).chain(known);
    for e in starts {
        if revoked(&e.fingerprint) || trusted.iter().any(|t| t.fingerprint == e.fingerprint) {
            continue;
        }
        if let Some(key) = genuine(e) {
            trusted.push(Trusted { fingerprint: e.fingerprint.clone(), key });
        }
    }
    if trusted.is_empty() {
        return Err(if revoked(pin) {
            format!(
                "the project key {pin} you pinned is revoked, and this machine knows no later key of the project; get \
                 the project's current fingerprint from the project itself, then `tbox-report leave {project}` and \
                 join again"
            )
        } else if entries.iter().any(|e| e.fingerprint == pin) {
            format!("the server sent a key that is not {pin} under its name")
        } else {
            format!("the server does not list the project key {pin} you pinned; nothing signed by it can be checked")
        });
    }
    loop {
        let before = trusted.len();
        for e in entries {
            if e.revoked || trusted.iter().any(|t| t.fingerprint == e.fingerprint) {
                continue;
            }
            let (Some(by), Some(sig)) = (&e.endorsed_by, &e.endorsement) else { continue };
            let Some(endorser) = trusted.iter().find(|t| &t.fingerprint == by) else { continue };
            if endorser.key.verify(&endorsement_message(project, &e.public_key), sig).is_err() {
                continue;
            }
            if let Some(key) = genuine(e) {
                trusted.push(Trusted { fingerprint: e.fingerprint.clone(), key });
            }
        }
        if trusted.len() == before {
            return Ok(trusted);
        }
    }
}

/// The keys this machine reached from its pin so far (see [`follow_chain`]).
fn known_keys(server: &str, project: &str) -> Vec<KeyEntry> {
    std::fs::read(dir(server, project).join("anchors.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// A recipe that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub recipe: Recipe,
    /// Hex SHA-256 of its bytes.
    pub digest: String,
    /// The fingerprint of the key that signed it.
    pub key: String,
    /// Where it came from: the server now, or the cache while the server is away.
    pub from_cache: Option<String>,
    /// What to cache once it runs: the exact bytes, their signature, the key list it was
    /// checked with.
    bytes: Vec<u8>,
    signature: String,
    keys: Vec<KeyEntry>,
    trusted: Vec<Trusted>,
}

impl Verified {
    /// Whether a key trusted for this recipe (the pin, or reached from it) signed these bytes:
    /// a build request naming a revision, say.
    pub fn signed_by_trusted(&self, bytes: &[u8], signature: &str) -> bool {
        self.trusted.iter().any(|t| t.key.verify(bytes, signature).is_ok())
    }
}

/// Why there is no recipe to run.
#[derive(Debug)]
pub enum NoRecipe {
    /// Refused: something is wrong with what the server served (or the pin). Nothing runs, the
    /// volunteer is told exactly why, and the project hears of it.
    Refused(String),
    /// The project has published none yet.
    NonePublished(String),
    /// The server could not be reached and no valid recipe is cached.
    Unreachable(String),
}

/// Where a project's recipe state lives: `$XDG_STATE_HOME/tbox/recipes/<server>/<project>/`.
fn dir(server: &str, project: &str) -> PathBuf {
    config::state_dir().join("recipes").join(config::server_id(server)).join(project)
}

/// The version and digest of the recipe last run here, if any.
pub fn last_run(server: &str, project: &str) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(dir(server, project).join("last-run")).ok()?;
    let (v, d) = text.trim().split_once(' ')?;
    Some((v.parse().ok()?, d.to_owned()))
}

/// Remembers that this recipe runs here: later ones may not be older, nor differ at this
/// version; and keeps it, to build while the server is away. Only a recipe that passed every
/// check, the volunteer's own (branch, capabilities) included, is kept.
pub fn record_run(server: &str, project: &str, v: &Verified) -> anyhow::Result<()> {
    let d = dir(server, project);
    std::fs::create_dir_all(&d)?;
    if v.from_cache.is_none() {
        write_atomic(&d.join("recipe.toml"), &v.bytes)?;
        write_atomic(&d.join("recipe.toml.sig"), v.signature.as_bytes())?;
        write_atomic(&d.join("keys.json"), &serde_json::to_vec(&v.keys)?)?;
    }
    let anchors: Vec<KeyEntry> = v
        .trusted
        .iter()
        .map(|t| KeyEntry {
            fingerprint: t.fingerprint.clone(),
            public_key: t.key.to_pem(),
            endorsed_by: None,
            endorsement: None,
            revoked: false,
        })
        .collect();
    write_atomic(&d.join("anchors.json"), &serde_json::to_vec(&anchors)?)?;
    write_atomic(&d.join("repo"), v.recipe.repo.as_bytes())?;
    write_atomic(&d.join("last-run"), format!("{} {}\n", v.recipe.version, v.digest).as_bytes())
}

/// The source repository this machine has built the project from, if any: a recipe may not
/// switch it (a stolen project key could otherwise point the checkout, which runs outside the
/// sandbox, at the volunteer's own repositories).
pub fn built_repo(server: &str, project: &str) -> Option<String> {
    std::fs::read_to_string(dir(server, project).join("repo")).ok().filter(|r| !r.is_empty())
}

/// Forgets a project (on `leave`).
pub fn forget(server: &str, project: &str) {
    let _ = std::fs::remove_dir_all(dir(server, project));
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// An HTTP answer read whole (within a limit).
pub struct Answer {
    pub status: u16,
    pub signature: Option<String>,
    /// `Tbox-Key`: which key the server says signed a recipe (a hint for messages only).
    pub key: Option<String>,
    pub body: Vec<u8>,
}

/// What went wrong reaching a server: it did not answer (or answered 5xx), or it answered
/// something else than asked.
pub enum Fetch {
    Down(String),
    Odd(String),
}

/// An agent for talking to a server about recipes and keys.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .timeout_connect(Some(Duration::from_secs(15)))
        // A hostile server must not send the volunteer's machine to other hosts (its LAN).
        .max_redirects(0)
        .build()
        .into()
}

/// GET `url`, reading at most `limit` bytes of body.
pub fn get(agent: &ureq::Agent, url: &str, limit: u64) -> Result<Answer, Fetch> {
    let mut resp = agent.get(url).call().map_err(|e| Fetch::Down(e.to_string()))?;
    let status = resp.status().as_u16();
    if status >= 500 || status == 429 || status == 408 {
        return Err(Fetch::Down(format!("it answered {status}")));
    }
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned());
    let (signature, key) = (header("tbox-signature"), header("tbox-key"));
    let body = resp
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| Fetch::Odd(format!("its answer could not be read (larger than {limit} bytes?): {e}")))?;
    Ok(Answer { status, signature, key, body })
}

/// The project's key list from the server.
pub fn fetch_keys(agent: &ureq::Agent, server: &str, project: &str) -> Result<Vec<KeyEntry>, Fetch> {
    let url = format!("{server}/api/v1/projects/{project}/keys");
    let a = get(agent, &url, 1 << 20)?;
    match a.status {
        200 => serde_json::from_slice::<KeyList>(&a.body)
            .map(|l| l.keys)
            .map_err(|e| Fetch::Odd(format!("{url} is not a tbox key list: {e}"))),
        404 => Err(Fetch::Odd(format!("the server has no project {project:?} ({url} answered 404)"))),
        s => Err(Fetch::Odd(format!("{url} answered {s}"))),
    }
}

/// Fetches, verifies and checks the project's recipe; falls back to the cached one (the last
/// one run here, see [`record_run`]) while the server cannot be reached.
pub fn obtain(agent: &ureq::Agent, server: &str, project: &str, pin: &str) -> Result<Verified, NoRecipe> {
    // Reasons quote what the server sent; they are printed and go into a report.
    obtain_unchecked(agent, server, project, pin).map_err(|e| match e {
        NoRecipe::Refused(why) => NoRecipe::Refused(crate::client::printable(&why)),
        NoRecipe::NonePublished(why) => NoRecipe::NonePublished(crate::client::printable(&why)),
        NoRecipe::Unreachable(why) => NoRecipe::Unreachable(crate::client::printable(&why)),
    })
}

fn obtain_unchecked(agent: &ureq::Agent, server: &str, project: &str, pin: &str) -> Result<Verified, NoRecipe> {
    let d = dir(server, project);
    let cached_keys =
        || -> Option<Vec<KeyEntry>> { serde_json::from_slice(&std::fs::read(d.join("keys.json")).ok()?).ok() };
    let mut down: Option<String> = None;
    let entries = match fetch_keys(agent, server, project) {
        Ok(e) => e,
        Err(Fetch::Down(why)) => {
            down = Some(why);
            cached_keys().ok_or_else(|| unreachable(server, down.as_deref()))?
        }
        Err(Fetch::Odd(why)) => return Err(NoRecipe::Refused(why)),
    };
    let mut signed_by: Option<String> = None;
    let (bytes, signature) = if down.is_some() {
        cached(server, project).ok_or_else(|| unreachable(server, down.as_deref()))?
    } else {
        let url = format!("{server}/api/v1/projects/{project}/recipe");
        match get(agent, &url, tbox_protocol::MAX_RECIPE_BYTES as u64 + 1) {
            Ok(a) if a.status == 200 => {
                let sig = a.signature.ok_or_else(|| {
                    NoRecipe::Refused(format!(
                        "{url} came without its Tbox-Signature header: nothing proves who wrote it"
                    ))
                })?;
                signed_by = a.key.filter(|k| config::is_fingerprint(k));
                (a.body, sig)
            }
            Ok(a) if a.status == 404 => {
                return Err(NoRecipe::NonePublished(format!("project {project} has published no recipe yet")));
            }
            Ok(a) => return Err(NoRecipe::Refused(format!("{url} answered {}", a.status))),
            Err(Fetch::Down(why)) => {
                down = Some(why);
                cached(server, project).ok_or_else(|| unreachable(server, down.as_deref()))?
            }
            Err(Fetch::Odd(why)) => return Err(NoRecipe::Refused(why)),
        }
    };
    let trusted = follow_chain(project, pin, &known_keys(server, project), &entries).map_err(NoRecipe::Refused)?;
    let keys: Vec<PublicKey> = trusted.iter().map(|t| t.key.clone()).collect();
    let (recipe, signer) = verify_recipe(&bytes, &signature, &keys).map_err(|e| {
        // Say which key the server claims signed it, and what is known of that key.
        let claimed = signed_by.as_deref().filter(|fp| !trusted.iter().any(|t| t.fingerprint == *fp));
        let revoked = claimed.is_some_and(|fp| entries.iter().any(|k| k.fingerprint == fp && k.revoked));
        NoRecipe::Refused(match claimed {
            Some(fp) if revoked => format!("{e}: the server says {fp} signed it, and the project has revoked that key"),
            Some(fp) => format!("{e}: the server says {fp} signed it, a key not reached from your pin"),
            None => e.to_string(),
        })
    })?;
    let digest = report_id(&bytes);
    let last = last_run(server, project);
    recipe
        .check(project, Utc::now(), &digest, last.as_ref().map(|(v, d)| (*v, d.as_str())))
        .map_err(|e| NoRecipe::Refused(e.to_string()))?;
    let key = trusted[signer].fingerprint.clone();
    let from_cache = down.map(|why| format!("the server could not be reached ({why}); using the cached recipe"));
    Ok(Verified { recipe, digest, key, from_cache, bytes, signature, keys: entries, trusted })
}

fn cached(server: &str, project: &str) -> Option<(Vec<u8>, String)> {
    let d = dir(server, project);
    let bytes = std::fs::read(d.join("recipe.toml")).ok()?;
    let sig = std::fs::read_to_string(d.join("recipe.toml.sig")).ok()?;
    Some((bytes, sig.trim().to_owned()))
}

fn unreachable(server: &str, why: Option<&str>) -> NoRecipe {
    NoRecipe::Unreachable(format!(
        "the server {server} could not be reached ({}) and no recipe is cached yet",
        why.unwrap_or("no answer")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbox_protocol::PrivateKey;

    fn key() -> PrivateKey {
        PrivateKey::generate(&mut rand_core::OsRng, 2048).unwrap_or_else(|e| panic!("{e}"))
    }

    fn entry(k: &PrivateKey, by: Option<&PrivateKey>) -> KeyEntry {
        let pem = k.public_key().to_pem();
        KeyEntry {
            fingerprint: k.public_key().fingerprint(),
            endorsement: by.map(|b| b.sign(&endorsement_message("demo", &pem))),
            endorsed_by: by.map(|b| b.public_key().fingerprint()),
            public_key: pem,
            revoked: false,
        }
    }

    #[test]
    fn a_rotation_is_followed_from_the_pin_and_a_revoked_key_is_not() {
        let (a, b, c, stranger) = (key(), key(), key(), key());
        let pin = a.public_key().fingerprint();
        let mut entries = vec![entry(&a, None), entry(&b, Some(&a)), entry(&c, Some(&b)), entry(&stranger, None)];
        let fps = |t: Vec<Trusted>| t.into_iter().map(|t| t.fingerprint).collect::<Vec<_>>();
        let trusted = fps(follow_chain("demo", &pin, &[], &entries).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(trusted.len(), 3, "a → b → c, not the stranger");
        assert!(!trusted.contains(&stranger.public_key().fingerprint()));

        // A server that claims the stranger was endorsed by a, with a signature of its own making.
        let mut forged = entry(&stranger, Some(&stranger));
        forged.endorsed_by = Some(pin.clone());
        entries[3] = forged;
        assert_eq!(fps(follow_chain("demo", &pin, &[], &entries).unwrap_or_else(|e| panic!("{e}"))).len(), 3);

        // An endorsement made for another project (one sharing the old key) is not followed here.
        assert_eq!(
            fps(follow_chain("other", &pin, &[], &entries).unwrap_or_else(|e| panic!("{e}"))),
            vec![pin.clone()]
        );

        // b revoked: neither b nor what b endorsed.
        entries[1].revoked = true;
        assert_eq!(fps(follow_chain("demo", &pin, &[], &entries).unwrap_or_else(|e| panic!("{e}"))), vec![pin.clone()]);
        // A key reached before (kept by this machine) stays trusted when its endorser is revoked
        // later, not when it is revoked itself.
        let known = [entry(&b, None)];
        entries[1].revoked = false;
        entries[0].revoked = true;
        assert_eq!(fps(follow_chain("demo", &pin, &known, &entries).unwrap_or_else(|e| panic!("{e}"))).len(), 2);
        entries[1].revoked = true;
        entries[0].revoked = false;
        // The pin revoked: nothing.
        entries[0].revoked = true;
        assert!(follow_chain("demo", &pin, &[], &entries).is_err_and(|e| e.contains("revoked")));
    }

    #[test]
    fn a_key_swapped_under_the_pins_name_is_refused() {
        let (a, b) = (key(), key());
        let mut e = entry(&b, None);
        e.fingerprint = a.public_key().fingerprint();
        let err = follow_chain("demo", &e.fingerprint.clone(), &[], &[e]).err().unwrap_or_default();
        assert!(err.contains("not SHA256:"), "{err}");
    }
}
