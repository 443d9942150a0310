//! The volunteer's side of a project's keys and recipes: fetch them from a server it does not
//! trust, and accept them only if a key the volunteer pinned (or one the project's signed key
//! list put in force since) signed these exact bytes, for this project, unexpired, and not
//! older than what this machine has seen.
//!
//! What this machine has seen is kept **per project and pinned key**, not per server, under
//! `$XDG_STATE_HOME/tbox/trust/<project>/<pin>/`: the highest key list (`keys.toml` and its
//! signature), every key any list revoked (`revoked`), the last recipe run (`recipe.toml`, for
//! building while the server is away), its version (`last-run`), the repository built from
//! (`repo`) and the pinned key itself (`pin.pem`). So a mirror at another address, or a project
//! moving servers, starts from everything this machine knows, not from nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use tbox_protocol::{
    KeyList, KeyListError, PublicKey, Recipe, parse_key_list, report_id, verify_key_list, verify_recipe,
};

use crate::client::printable;
use crate::config;

/// Most key list versions walked in one go (from the one held to the newest).
const MAX_WALK: usize = 100;

/// What this machine knows of one project, for one pinned key.
pub struct Trust {
    dir: PathBuf,
    project: String,
    pin: String,
    /// The pinned key itself, once seen (its PEM hashes to the pin).
    pin_key: Option<PublicKey>,
    /// The highest key list accepted, with its bytes' digest.
    held: Option<(KeyList, String)>,
    /// Every fingerprint any accepted list revoked: never trusted again.
    revoked: BTreeSet<String>,
    /// A note for the volunteer about where the keys came from (server away, …).
    pub note: Option<String>,
}

/// Where one project's trust state lives for one pin.
fn dir(project: &str, pin: &str) -> PathBuf {
    let hex = pin.strip_prefix("SHA256:").unwrap_or(pin);
    config::state_dir().join("trust").join(project).join(hex)
}

impl Trust {
    /// What this machine knows of `project` under `pin` (nothing, the first time).
    pub fn load(project: &str, pin: &str) -> Trust {
        let dir = dir(project, pin);
        adopt_legacy(&dir, project);
        let pin_key = std::fs::read_to_string(dir.join("pin.pem"))
            .ok()
            .and_then(|pem| PublicKey::from_pem(&pem).ok())
            .filter(|k| k.fingerprint() == pin);
        // Verified when it was kept; parsed again (the file is ours, in the volunteer's HOME).
        let held = std::fs::read(dir.join("keys.toml"))
            .ok()
            .and_then(|bytes| parse_key_list(&bytes).ok().map(|l| (l, report_id(&bytes))))
            .filter(|(l, _)| l.project == project);
        let revoked = std::fs::read_to_string(dir.join("revoked"))
            .map(|t| t.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default();
        Trust { dir, project: project.to_owned(), pin: pin.to_owned(), pin_key, held, revoked, note: None }
    }

    /// The version of the key list held, if any.
    pub fn key_list_version(&self) -> Option<u64> {
        self.held.as_ref().map(|(l, _)| l.version)
    }

    /// The keys trusted now: the held key list's (or, before any, the pin), none revoked.
    pub fn keys(&self) -> Vec<(String, PublicKey)> {
        let keys = match &self.held {
            Some((list, _)) => list.keys.clone(),
            None => self.pin_key.iter().map(|k| (self.pin.clone(), k.clone())).collect(),
        };
        keys.into_iter().filter(|(fp, _)| !self.revoked.contains(fp)).collect()
    }

    /// Whether any key list seen revoked `fingerprint`.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.revoked.contains(fingerprint)
    }

    /// Brings what this machine knows up to date with the server: the pinned key's PEM, and the
    /// newest key list a trusted key signed. Err: refused (what the server sent cannot be
    /// trusted, or the list held expired); nothing may run.
    pub fn refresh(&mut self, agent: &ureq::Agent, server: &str) -> Result<(), String> {
        let project = self.project.clone();
        let newest = match get(agent, &format!("{server}/api/v1/projects/{project}/keys"), 256 << 10) {
            Ok(a) if a.status == 200 => Some(a),
            // Trust always rests on a signed key list: it expires, so a mirror that hides the
            // project's lists (and a revocation in them) cannot keep a key trusted for ever.
            Ok(a) if a.status == 404 && self.held.is_none() => return Err(no_key_list(&project)),
            Ok(a) if a.status == 404 => None,
            Ok(a) => return Err(format!("{server}/api/v1/projects/{project}/keys answered {}", a.status)),
            Err(Fetch::Down(why)) if self.held.is_none() => {
                return Err(format!(
                    "the server could not be reached ({why}) and this machine holds no key list of {project} yet"
                ));
            }
            Err(Fetch::Down(why)) => {
                self.note = Some(format!("the server could not be reached ({why}); using the keys this machine knows"));
                None
            }
            Err(Fetch::Odd(why)) => return Err(why),
        };
        if self.pin_key.is_none() {
            self.find_pin(agent, server, newest.as_ref().map(|a| a.body.as_slice()));
        }
        if let Some(a) = newest {
            let sig = a.signature.ok_or_else(|| {
                "the project's key list came without its Tbox-Signature header: nothing proves who wrote it".to_owned()
            })?;
            self.accept(agent, server, &a.body, &sig)?;
        }
        if let Some((list, _)) = &self.held
            && Utc::now() >= list.expires
        {
            return Err(KeyListError::Expired { version: list.version, expires: list.expires }.to_string());
        }
        if self.keys().is_empty() {
            return Err(if self.revoked.contains(&self.pin) || self.held.is_some() {
                format!(
                    "no key you trust is left for {project}: the key list (version {}) revoked {}; get the project's \
                     current fingerprint from the project itself, then `tbox-report leave {project}` and join again",
                    self.key_list_version().unwrap_or_default(),
                    self.pin
                )
            } else {
                format!(
                    "the server does not show the project key {} you pinned; nothing signed by it can be checked",
                    self.pin
                )
            });
        }
        Ok(())
    }

    /// The pinned key's PEM: from the key list just served if it lists it, else from the
    /// server's signing keys; believed only if it hashes to the pin. Kept once found.
    fn find_pin(&mut self, agent: &ureq::Agent, server: &str, list: Option<&[u8]>) {
        let from_list = list
            .and_then(|b| parse_key_list(b).ok())
            .and_then(|l| l.keys.into_iter().find(|(fp, _)| *fp == self.pin).map(|(_, k)| k));
        let found = from_list.or_else(|| {
            signing_keys(agent, server, &self.project)
                .ok()?
                .into_iter()
                .filter_map(|k| PublicKey::from_pem(&k.public_key).ok())
                .find(|k| k.fingerprint() == self.pin)
        });
        if let Some(k) = found {
            let _ = std::fs::create_dir_all(&self.dir);
            let _ = write_atomic(&self.dir.join("pin.pem"), k.to_pem().as_bytes());
            self.pin_key = Some(k);
        }
    }

    /// Accepts the newest key list served if a trusted key signed it, walking the versions in
    /// between when it was signed by a key that only a later list put in force.
    fn accept(&mut self, agent: &ureq::Agent, server: &str, bytes: &[u8], signature: &str) -> Result<(), String> {
        let digest = report_id(bytes);
        if self.held.as_ref().is_some_and(|(_, d)| *d == digest) {
            return Ok(());
        }
        match self.adopt(bytes, signature) {
            Err(KeyListError::NotSigned) => {}
            other => return other.map_err(|e| e.to_string()),
        }
        // Not signed by what is trusted now: the versions in between, oldest first, each signed
        // by a key of the one before.
        let held = self.key_list_version().unwrap_or(0);
        let url = format!("{server}/api/v1/projects/{}/key-lists", self.project);
        let versions: Vec<u64> = match get(agent, &url, 1 << 20) {
            Ok(a) if a.status == 200 => serde_json::from_slice::<History>(&a.body)
                .map(|h| h.key_lists.into_iter().map(|e| e.version).filter(|v| *v > held).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for v in versions.into_iter().take(MAX_WALK) {
            let url = format!("{server}/api/v1/projects/{}/key-lists/{v}", self.project);
            if let Ok(a) = get(agent, &url, 256 << 10)
                && a.status == 200
                && let Some(sig) = &a.signature
            {
                // One a trusted key did not sign (planted by the mirror) is passed over.
                let _ = self.adopt(&a.body, sig);
            }
        }
        if self.held.as_ref().is_some_and(|(_, d)| *d == digest) {
            return Ok(());
        }
        // Say what it is, for the volunteer: only now are the bytes parsed without trust.
        Err(match parse_key_list(bytes) {
            Ok(l) if self.key_list_version().is_some_and(|h| l.version < h) => {
                KeyListError::Rollback { held: self.key_list_version().unwrap_or(0), found: l.version }.to_string()
            }
            Ok(l) => format!(
                "the project's key list version {} is not signed by a key you trust (pinned {}, or in force by a key \
                 list it signed)",
                l.version, self.pin
            ),
            Err(_) => "the project's key list is not signed by a key you trust".to_owned(),
        })
    }

    /// Takes one signed key list if a trusted key signed it and it is newer (or the same).
    fn adopt(&mut self, bytes: &[u8], signature: &str) -> Result<(), KeyListError> {
        let keys: Vec<PublicKey> = self.keys().into_iter().map(|(_, k)| k).collect();
        let (list, _) = verify_key_list(bytes, signature, &keys)?;
        let digest = report_id(bytes);
        let held = self.held.as_ref().map(|(l, d)| (l.version, d.as_str()));
        list.check(&self.project, Utc::now(), &digest, held)?;
        self.revoked.extend(list.revoked.iter().cloned());
        let _ = std::fs::create_dir_all(&self.dir);
        // Revocations first: were the rest lost, what was revoked stays revoked.
        let revoked: String = self.revoked.iter().map(|r| format!("{r}\n")).collect();
        let saved = write_atomic(&self.dir.join("revoked"), revoked.as_bytes())
            .and_then(|()| write_atomic(&self.dir.join("keys.toml.sig"), signature.as_bytes()))
            .and_then(|()| write_atomic(&self.dir.join("keys.toml"), bytes));
        if let Err(e) = saved {
            // Kept in memory for this run; the next run fetches it again.
            self.note = Some(format!("could not keep the key list in {}: {e}", self.dir.display()));
        }
        self.held = Some((list, digest));
        Ok(())
    }
}

/// Why nothing of a project without a key list runs, and what its maintainers do about it.
fn no_key_list(project: &str) -> String {
    format!(
        "project {project} has not published its signed key list, and nothing of a project runs here without one; \
         its maintainers publish it with `tbox-report keys sign keys.toml --key PROJECT-KEY.pem --project {project}` \
         and `tbox-report keys publish keys.toml --server URL`"
    )
}

#[derive(Deserialize)]
struct History {
    key_lists: Vec<HistoryEntry>,
}

#[derive(Deserialize)]
struct HistoryEntry {
    version: u64,
}

/// Versions kept under the old layout (per server URL, before 0.2) are adopted once, taking the
/// highest any server saw: a volunteer who upgrades keeps its rollback protection.
fn adopt_legacy(dir: &Path, project: &str) {
    if dir.join("last-run").exists() {
        return;
    }
    let Ok(servers) = std::fs::read_dir(config::state_dir().join("recipes")) else { return };
    let best = servers
        .flatten()
        .map(|s| s.path().join(project))
        .filter_map(|d| {
            let text = std::fs::read_to_string(d.join("last-run")).ok()?;
            let (v, _) = text.trim().split_once(' ')?;
            Some((v.parse::<u64>().ok()?, d))
        })
        .max_by_key(|(v, _)| *v);
    if let Some((_, old)) = best
        && std::fs::create_dir_all(dir).is_ok()
    {
        for f in ["last-run", "repo", "recipe.toml", "recipe.toml.sig"] {
            if let Ok(bytes) = std::fs::read(old.join(f)) {
                let _ = write_atomic(&dir.join(f), &bytes);
            }
        }
    }
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
    /// What to cache once it runs: the exact bytes and their signature.
    bytes: Vec<u8>,
    signature: String,
    /// The keys trusted when it was checked (for signed requests).
    trusted: Vec<PublicKey>,
    dir: PathBuf,
}

impl Verified {
    /// Whether a key trusted for this recipe signed these bytes: a build request, say.
    pub fn signed_by_trusted(&self, bytes: &[u8], signature: &str) -> bool {
        self.trusted.iter().any(|k| k.verify(bytes, signature).is_ok())
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

/// The recipe last run here for this project and pin: its version, digest and signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub version: u64,
    pub digest: String,
    /// Unknown for what versions before 0.3 wrote.
    pub signer: Option<String>,
}

/// The recipe last run here for this project and pin, if any.
pub fn last_run(project: &str, pin: &str) -> Option<LastRun> {
    let text = std::fs::read_to_string(dir(project, pin).join("last-run")).ok()?;
    let mut f = text.split_whitespace();
    let version = f.next()?.parse().ok()?;
    let digest = f.next()?.to_owned();
    let signer = f.next().filter(|s| tbox_protocol::is_fingerprint(s)).map(str::to_owned);
    Some(LastRun { version, digest, signer })
}

/// Remembers that this recipe runs here: later ones may not be older, nor differ at this
/// version; and keeps it, to build while the server is away. Only a recipe that passed every
/// check, the volunteer's own (branch, capabilities) included, is kept.
pub fn record_run(v: &Verified) -> anyhow::Result<()> {
    let d = &v.dir;
    std::fs::create_dir_all(d)?;
    if v.from_cache.is_none() {
        write_atomic(&d.join("recipe.toml"), &v.bytes)?;
        write_atomic(&d.join("recipe.toml.sig"), v.signature.as_bytes())?;
    }
    write_atomic(&d.join("repo"), v.recipe.repo.as_bytes())?;
    write_atomic(&d.join("last-run"), format!("{} {} {}\n", v.recipe.version, v.digest, v.key).as_bytes())?;
    Ok(())
}

/// The source repository this machine has built the project from, if any: a recipe may not
/// switch it (a stolen project key could otherwise point the checkout, which runs outside the
/// sandbox, at the volunteer's own repositories).
pub fn built_repo(project: &str, pin: &str) -> Option<String> {
    std::fs::read_to_string(dir(project, pin).join("repo")).ok().filter(|r| !r.is_empty())
}

/// Forgets a project (on `leave`): every pin's state.
pub fn forget(project: &str) {
    let _ = std::fs::remove_dir_all(config::state_dir().join("trust").join(project));
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
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

/// GET `url`, reading at most `limit` bytes of body. A redirect is an answer like any other
/// (never followed): the caller sees its status.
pub fn get(agent: &ureq::Agent, url: &str, limit: u64) -> Result<Answer, Fetch> {
    let base = crate::client::base_url(url);
    let mut resp = agent.get(url).call().map_err(|e| Fetch::Down(crate::client::unreachable(&base, &e)))?;
    let status = resp.status().as_u16();
    let content_type = crate::client::content_type(resp.headers());
    if (400..500).contains(&status) && content_type.as_deref() != Some("application/json") {
        // A tbox server says "not found" in JSON: an HTML 404 is a wrong address, not "no recipe".
        return Err(Fetch::Odd(crate::client::not_tbox(&base, status, content_type.as_deref())));
    }
    if status >= 500 || status == 429 || status == 408 {
        return Err(Fetch::Down(format!("it answered {status}")));
    }
    if (300..400).contains(&status) {
        return Err(Fetch::Odd(format!("{url} answered {status} (a redirect): tbox-report follows none")));
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

/// One of the keys the server says may sign for a project (unverified: only a key whose PEM
/// hashes to a fingerprint the volunteer has is ever used).
#[derive(Debug, Clone, Deserialize)]
pub struct SigningKey {
    pub fingerprint: String,
    pub public_key: String,
}

#[derive(Deserialize)]
struct SigningKeys {
    keys: Vec<SigningKey>,
}

/// `GET /api/v1/projects/{p}/signing-keys`: what the server says may sign for the project.
pub fn signing_keys(agent: &ureq::Agent, server: &str, project: &str) -> Result<Vec<SigningKey>, Fetch> {
    let url = format!("{server}/api/v1/projects/{project}/signing-keys");
    let a = get(agent, &url, 1 << 20)?;
    match a.status {
        200 => serde_json::from_slice::<SigningKeys>(&a.body)
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
        NoRecipe::Refused(why) => NoRecipe::Refused(printable(&why)),
        NoRecipe::NonePublished(why) => NoRecipe::NonePublished(printable(&why)),
        NoRecipe::Unreachable(why) => NoRecipe::Unreachable(printable(&why)),
    })
}

fn obtain_unchecked(agent: &ureq::Agent, server: &str, project: &str, pin: &str) -> Result<Verified, NoRecipe> {
    let mut trust = Trust::load(project, pin);
    trust.refresh(agent, server).map_err(NoRecipe::Refused)?;
    let d = trust.dir.clone();
    let mut down: Option<String> = None;
    let mut signed_by: Option<String> = None;
    let url = format!("{server}/api/v1/projects/{project}/recipe");
    let (bytes, signature) = match get(agent, &url, tbox_protocol::MAX_RECIPE_BYTES as u64 + 1) {
        Ok(a) if a.status == 200 => {
            let sig = a.signature.ok_or_else(|| {
                NoRecipe::Refused(format!("{url} came without its Tbox-Signature header: nothing proves who wrote it"))
            })?;
            signed_by = a.key.filter(|k| tbox_protocol::is_fingerprint(k));
            (a.body, sig)
        }
        Ok(a) if a.status == 404 => {
            return Err(NoRecipe::NonePublished(format!("project {project} has published no recipe yet")));
        }
        Ok(a) => return Err(NoRecipe::Refused(format!("{url} answered {}", a.status))),
        Err(Fetch::Down(why)) => {
            let cached = cached(&d).ok_or_else(|| unreachable(server, &why))?;
            down = Some(why);
            cached
        }
        Err(Fetch::Odd(why)) => return Err(NoRecipe::Refused(why)),
    };
    let trusted = trust.keys();
    let keys: Vec<PublicKey> = trusted.iter().map(|(_, k)| k.clone()).collect();
    let (recipe, signer) = verify_recipe(&bytes, &signature, &keys).map_err(|e| {
        // Say which key the server claims signed it, and what is known of that key.
        let claimed = signed_by.as_deref().filter(|fp| !trusted.iter().any(|(t, _)| t == fp));
        NoRecipe::Refused(match claimed {
            Some(fp) if trust.is_revoked(fp) => {
                format!("{e}: the server says {fp} signed it, and the project has revoked that key")
            }
            Some(fp) => format!("{e}: the server says {fp} signed it, a key not in force for you"),
            None => e.to_string(),
        })
    })?;
    let digest = report_id(&bytes);
    // A version run here binds (no older one runs after it), unless the key that signed it has
    // been revoked since: a stolen key that signed version 1000 must not lock the project's
    // volunteers out of its real recipes.
    let last = last_run(project, pin).filter(|l| !l.signer.as_ref().is_some_and(|s| trust.is_revoked(s)));
    recipe
        .check(project, Utc::now(), &digest, last.as_ref().map(|l| (l.version, l.digest.as_str())))
        .map_err(|e| NoRecipe::Refused(e.to_string()))?;
    let key = trusted[signer].0.clone();
    let from_cache = down.map(|why| format!("the server could not be reached ({why}); using the cached recipe"));
    Ok(Verified { recipe, digest, key, from_cache, bytes, signature, trusted: keys, dir: d })
}

fn cached(dir: &Path) -> Option<(Vec<u8>, String)> {
    let bytes = std::fs::read(dir.join("recipe.toml")).ok()?;
    let sig = std::fs::read_to_string(dir.join("recipe.toml.sig")).ok()?;
    Some((bytes, sig.trim().to_owned()))
}

fn unreachable(server: &str, why: &str) -> NoRecipe {
    NoRecipe::Unreachable(format!("the server {server} could not be reached ({why}) and no recipe is cached yet"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbox_protocol::PrivateKey;

    fn key() -> PrivateKey {
        PrivateKey::generate(&mut rand_core::OsRng, 2048).unwrap_or_else(|e| panic!("{e}"))
    }

    fn list(version: u64, keys: &[&PrivateKey], revoked: &[&PrivateKey]) -> String {
        let pems: Vec<String> = keys.iter().map(|k| format!("\"\"\"{}\"\"\"", k.public_key().to_pem())).collect();
        let revoked: Vec<String> = revoked.iter().map(|k| format!("{:?}", k.public_key().fingerprint())).collect();
        let expires = (Utc::now() + chrono::TimeDelta::days(30)).to_rfc3339();
        format!(
            "format = \"tbox-keys/1\"\nproject = \"demo\"\nversion = {version}\nexpires = \"{expires}\"\nkeys = [{}]\n\
             revoked = [{}]\n",
            pems.join(", "),
            revoked.join(", ")
        )
    }

    fn trust(pin: &PrivateKey) -> Trust {
        let d = std::env::temp_dir().join(format!(
            "tbox-trust-{}-{}",
            std::process::id(),
            rand_core::RngCore::next_u32(&mut rand_core::OsRng)
        ));
        Trust {
            dir: d,
            project: "demo".into(),
            pin: pin.public_key().fingerprint(),
            pin_key: Some(pin.public_key()),
            held: None,
            revoked: BTreeSet::new(),
            note: None,
        }
    }

    #[test]
    fn a_key_list_moves_trust_and_a_revocation_sticks() -> Result<(), KeyListError> {
        let (a, b, stranger) = (key(), key(), key());
        let mut t = trust(&a);
        assert_eq!(t.keys().len(), 1, "before any list: the pin");
        // A stranger's list is refused; the pin's is taken.
        let v1 = list(1, &[&a, &b], &[]);
        assert_eq!(t.adopt(v1.as_bytes(), &stranger.sign(v1.as_bytes())), Err(KeyListError::NotSigned));
        t.adopt(v1.as_bytes(), &a.sign(v1.as_bytes()))?;
        assert_eq!(t.keys().len(), 2);
        // b rotates a out: a is revoked for good, b alone signs.
        let v2 = list(2, &[&b], &[&a]);
        t.adopt(v2.as_bytes(), &a.sign(v2.as_bytes()))?;
        assert_eq!(t.keys().iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(), vec![b.public_key().fingerprint()]);
        assert!(t.is_revoked(&a.public_key().fingerprint()));
        // The older list again (a mirror rolling back): refused, a stays revoked.
        assert!(matches!(t.adopt(v1.as_bytes(), &a.sign(v1.as_bytes())), Err(KeyListError::NotSigned)));
        assert!(matches!(
            t.adopt(v1.as_bytes(), &b.sign(v1.as_bytes())),
            Err(KeyListError::Rollback { held: 2, found: 1 })
        ));
        // A later list that lists a again: a stays untrusted, whatever the list says.
        let v3 = list(3, &[&a, &b], &[]);
        t.adopt(v3.as_bytes(), &b.sign(v3.as_bytes()))?;
        assert_eq!(t.keys().len(), 1);
        let _ = std::fs::remove_dir_all(&t.dir);
        Ok(())
    }
}
