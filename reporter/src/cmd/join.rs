//! `tbox-report join URL --key SHA256:…` and `tbox-report leave P`: everything a volunteer
//! needs to start (or stop) building a project from its signed recipe.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;
use tbox_protocol::{BranchName, PrivateKey};

use crate::cli::{JoinArgs, LeaveArgs};
use crate::client::{Client, Sent, printable};
use crate::config::{self, Config};
use crate::trust::{self, Fetch, NoRecipe};
use crate::{exit, keyfile};

pub fn join(args: &JoinArgs) -> anyhow::Result<u8> {
    let (server, project) = match split_url(&args.url) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("tbox-report: {e:#}");
            return Ok(exit::USAGE);
        }
    };
    let config_path = config::config_path(args.common.config.as_deref());
    let existing = if config_path.exists() { Some(Config::load(&config_path)?) } else { None };
    // One config for every server: a project of another server names its server (and, where
    // this machine has another name there, its builder).
    if let Some(c) = &existing
        && let Some(p) = c.projects.iter().find(|p| p.name == project)
        && c.server_of(p) != server
    {
        bail!(
            "{} builds a project called {project} already, for {}; one config holds a project name once \
             (`tbox-report leave {project}` first, or use --config with another file)",
            config_path.display(),
            c.server_of(p)
        );
    }

    // The key to pin: given, or confirmed by a person on a terminal. Never trusted silently.
    let agent = trust::agent();
    let keys = match trust::signing_keys(&agent, &server, &project) {
        Ok(k) => k,
        Err(Fetch::Down(why)) => {
            eprintln!("tbox-report: cannot reach {server} ({}); nothing was changed", printable(&why));
            return Ok(exit::SPOOLED);
        }
        Err(Fetch::Odd(why)) => bail!("{}", printable(&why)),
    };
    if keys.is_empty() {
        bail!(
            "project {project} has no signing key on {server} yet, so it cannot publish a recipe; ask its maintainers"
        );
    }
    let pin = match &args.key {
        Some(k) => {
            // Fingerprints are often copied from places that print hex in capitals.
            let given = k;
            let k = k.strip_prefix("SHA256:").map(|h| format!("SHA256:{}", h.to_ascii_lowercase())).unwrap_or_default();
            if !config::is_fingerprint(&k) {
                eprintln!("tbox-report: --key must be a fingerprint, SHA256: and 64 hex digits; got {given:?}");
                return Ok(exit::USAGE);
            }
            k
        }
        None => match confirm(&project, &keys)? {
            Some(k) => k,
            None => return Ok(exit::USAGE),
        },
    };
    // The pin's key, and the project's key list checked from it (a list it signed may have
    // moved the project to other keys since).
    if let Err(why) = trust::Trust::load(&project, &pin).refresh(&agent, &server) {
        eprintln!("tbox-report: REFUSED to join {project}: {}; nothing was changed", printable(&why));
        eprintln!("tbox-report: check the fingerprint with the project itself (its README or website)");
        return Ok(exit::REFUSED);
    }
    if let Some(c) = &existing
        && let Some(p) = c.projects.iter().find(|p| p.name == project)
        && p.recipe.as_deref() != Some(pin.as_str())
    {
        bail!(
            "{project} is in {} already, with other steps or another key; `tbox-report leave {project}` first",
            config_path.display()
        );
    }

    // What the volunteer signs up for: the recipe as it is now, checked as `run` will.
    let recipe = match trust::obtain(&agent, &server, &project, &pin) {
        Ok(v) => Some(v),
        Err(NoRecipe::NonePublished(why)) => {
            crate::say!("note: {why}; this machine will build it once one is published");
            None
        }
        Err(NoRecipe::Refused(why)) => {
            eprintln!("tbox-report: REFUSED to join {project}: {why}; nothing was changed");
            return Ok(exit::REFUSED);
        }
        Err(NoRecipe::Unreachable(why)) => {
            eprintln!("tbox-report: {why}; nothing was changed");
            return Ok(exit::SPOOLED);
        }
    };
    let branch = match (&args.branch, &recipe) {
        (Some(b), _) => match BranchName::parse(b) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("tbox-report: --branch {b:?}: {}", e.message);
                return Ok(exit::USAGE);
            }
        },
        (None, Some(v)) => {
            v.recipe.branches.iter().find_map(|b| BranchName::parse(b).ok()).unwrap_or_else(BranchName::main)
        }
        (None, None) => BranchName::main(),
    };
    if let Some(v) = &recipe
        && !v.recipe.allows_branch(branch.as_str())
    {
        bail!("the recipe allows only the branches {}; choose one with --branch", v.recipe.branches.join(", "));
    }

    // The config and the key, made on first use.
    let config_dir = config_path.parent().map(Path::to_path_buf).unwrap_or_else(config::config_dir);
    let (builder, key_path) = match &existing {
        Some(c) => match site_builder(c, &server) {
            // This machine has a name (and a key) on that server already: it keeps them.
            Some((b, key)) => {
                if args.builder.as_ref().is_some_and(|given| *given != b) {
                    bail!(
                        "this machine is builder {b} on {server}; --builder cannot rename it (`tbox-report register \
                         --builder NAME --project P` does)"
                    );
                }
                (b, key)
            }
            // A new server: the usual name, or the one given (where the usual one is taken), and
            // a key of its own, so that what this machine signs for one server is nothing to
            // another (a lease or report body replayed there).
            None => (
                args.builder.clone().unwrap_or_else(|| c.builder.clone()),
                config_dir.join(format!("builder-{}.pem", config::server_id(&server))),
            ),
        },
        None => (args.builder.clone().unwrap_or_else(default_builder), config_dir.join("builder.pem")),
    };
    tbox_protocol::validate_name("builder", &builder, 64)?;
    let key = if key_path.exists() {
        keyfile::load(&key_path)?
    } else {
        let k = PrivateKey::generate(&mut rand_core::OsRng, 3072)?;
        keyfile::write_new(&key_path, &k)?;
        std::fs::write(key_path.with_extension("pub"), k.public_key().to_pem())?;
        crate::say!("made this machine's key: {} (mode 600)", key_path.display());
        k
    };

    // Registered before the config changes, so that a name taken by someone else changes nothing.
    let client = Client::new(&server, &builder, key);
    let owner = args.owner.clone().or_else(|| existing.as_ref().and_then(|c| c.owner.clone()));
    let body = serde_json::to_vec(&json!({
        "name": builder,
        "owner": owner,
        "projects": [project],
        "public_key": client.public_key().to_pem(),
        "description": "joined with tbox-report join",
    }))?;
    let registration = match client.register(&body) {
        Sent::Delivered(v) => Some(v),
        Sent::Rejected { status, message } => {
            eprintln!("tbox-report: the server refused to register {builder} ({status}): {message}");
            if status == 409 {
                eprintln!("tbox-report: choose another name with --builder");
            }
            eprintln!(
                "tbox-report: {project} was not added to {} (this machine's key stays, for the next try)",
                config_path.display()
            );
            return Ok(exit::REJECTED);
        }
        Sent::Unreachable(e) | Sent::NotTbox(e) => {
            eprintln!(
                "tbox-report: could not register now ({e}); the config is written: run `tbox-report register \
                 --project {project}` in a while"
            );
            None
        }
    };

    let already = existing.as_ref().is_some_and(|c| c.projects.iter().any(|p| p.name == project));
    if !already {
        let workdir = match &args.workdir {
            // Cron runs elsewhere: the config holds an absolute path.
            Some(w) if w.is_relative() => std::env::current_dir()?.join(w),
            Some(w) => w.clone(),
            None => data_dir().join("work").join(config::server_id(&server)).join(&project),
        };
        let mut text = match &existing {
            Some(_) => std::fs::read_to_string(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?,
            None => new_config(&server, &builder, &key_path, owner.as_deref()),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let repo = recipe.as_ref().map(|v| v.recipe.repo.as_str());
        let mut block = project_block(&project, &pin, repo, branch.as_str(), &workdir);
        if let Some(c) = existing.as_ref().filter(|c| c.server.trim_end_matches('/') != server) {
            block.push_str(&format!("server  = {}   # not the top-level server\n", quoted(&server)));
            if builder != c.builder {
                block.push_str(&format!("builder = {}   # this machine's name on that server\n", quoted(&builder)));
            }
            if key_path != c.key_path() {
                let k = key_path.display().to_string();
                block.push_str(&format!("key     = {}   # this machine's key on that server\n", quoted(&k)));
            }
        }
        text.push_str(&block);
        write_config(&config_path, &text)?;
        crate::say!("{project} added to {}", config_path.display());
    } else {
        crate::say!("{project} is in {} already", config_path.display());
    }

    if let Some(v) = &recipe {
        let r = &v.recipe;
        crate::say!(
            "recipe version {} signed by {}: builds {} from {} (steps: {})",
            r.version,
            v.key,
            branch,
            r.repo,
            r.steps.iter().map(|s| printable(&s.name)).collect::<Vec<_>>().join(" → ")
        );
        let declared = existing.as_ref().map(|c| c.capabilities.clone()).unwrap_or_default();
        let missing: Vec<&String> = r.requires.iter().filter(|c| !declared.contains(c)).collect();
        if !missing.is_empty() {
            let described = capabilities(&agent, &server, &project);
            for m in missing {
                let what = described
                    .iter()
                    .find(|(n, _)| n == m)
                    .map(|(_, d)| crate::client::printable(d))
                    .unwrap_or_else(|| "no description".into());
                crate::say!(
                    "warning: the recipe requires capability {m:?} ({what}), which this machine does not declare;"
                );
                crate::say!("         `run` skips it until `capabilities` in {} lists it", config_path.display());
            }
        }
        if r.network && !existing.as_ref().is_some_and(|c| c.allow_network) {
            crate::say!("warning: the recipe needs the network; `run` skips it unless you set allow_network = true");
        }
    }

    let me = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "tbox-report".into());
    let me = shell_word(&me);
    let cfg = shell_word(&config_path.display().to_string());
    // The folder the cron line's output goes to exists from now on: otherwise the shell cron
    // starts fails on the redirection before tbox-report runs, every time, and a build that an
    // admin approves later never happens.
    let cron_log = config::state_dir().join("cron.log");
    if let Some(dir) = cron_log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cron_log = shell_word(&cron_log.display().to_string());
    crate::say!();
    match registration.as_ref().map(|v| (v["status"].as_str().unwrap_or(""), &v["pending_projects"])) {
        Some(("active", pending)) if pending.as_array().is_some_and(|a| a.iter().any(|p| p == &json!(project))) => {
            crate::say!(
                "builder {builder} is approved, but must be approved for {project} too: until then its reports"
            );
            crate::say!("are refused. An admin of {server} runs: tbox-server builder approve {builder}");
        }
        Some(("active", _)) => crate::say!("builder {builder} is approved for {project}: nothing to wait for"),
        Some(_) => {
            crate::say!("builder {builder} is registered and PENDING: an admin of {server} must approve it");
            crate::say!("(tbox-server builder approve {builder}); until then its reports are refused");
        }
        None => {}
    }
    crate::say!("then build once by hand:  {me} run --config {cfg} --project {project}");
    crate::say!("and let cron do the rest (crontab -e):");
    crate::say!("  */15 * * * * {me} run --config {cfg} 2>>{cron_log}");
    crate::say!("or, to build also what the project requests as soon as it asks, keep `{me} serve --config {cfg}`");
    crate::say!("running, instead or beside (the package's systemd user unit: `systemctl --user enable --now");
    crate::say!("tbox-report-serve`; one build at a time on this machine either way)");
    // Joined, but not registered: say so in the exit code too (as for a spooled report).
    Ok(if registration.is_some() { exit::OK } else { exit::SPOOLED })
}

pub fn leave(args: &LeaveArgs) -> anyhow::Result<u8> {
    let path = config::config_path(args.common.config.as_deref());
    let config = Config::load(&path)?;
    let index = config
        .projects
        .iter()
        .position(|p| p.name == args.project)
        .with_context(|| format!("{} does not build {:?}", path.display(), args.project))?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let rest = remove_project(&text, index)?;
    write_config(&path, &rest)?;
    trust::forget(&args.project);
    let site = config.site_of(&args.project)?;
    for kind in ["last-revision", "refused"] {
        let _ = std::fs::remove_file(site.project_state(kind, &args.project));
    }
    crate::say!("left {}: removed from {}, its recipe forgotten", args.project, path.display());
    crate::say!(
        "its source stays in {} (delete it if you like); the server keeps this builder's past builds",
        config::expand(&config.projects[index].workdir).display()
    );
    Ok(exit::OK)
}

/// `https://host/prefix/projects/demo/` → (`https://host/prefix`, `demo`).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let trimmed = url.trim().trim_end_matches('/');
    let (server, project) = trimmed
        .rsplit_once("/projects/")
        .with_context(|| format!("{url:?} is not a project's page (https://server/projects/NAME)"))?;
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("{url:?} is not an http:// or https:// URL");
    }
    tbox_protocol::validate_name("project", project, 64)?;
    Ok((server.to_owned(), project.to_owned()))
}

/// This machine's builder name and key on `server`, if the config has them there already.
fn site_builder(config: &Config, server: &str) -> Option<(String, PathBuf)> {
    config.sites().into_iter().find(|s| s.server == server).map(|s| (s.builder.clone(), s.key_path()))
}

/// Asks a person to confirm the project's key. None: no terminal, or not confirmed.
fn confirm(project: &str, keys: &[trust::SigningKey]) -> anyhow::Result<Option<String>> {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        eprintln!(
            "tbox-report: no --key, and no terminal to confirm one on: refusing to trust a key on first use. Get the \
             project's key fingerprint from the project itself (its README or website) and run: tbox-report join \
             URL --key SHA256:…"
        );
        return Ok(None);
    }
    eprintln!("The server lists these signing keys for project {project}:");
    for k in keys.iter().filter(|k| config::is_fingerprint(&k.fingerprint)) {
        eprintln!("  {}", k.fingerprint);
    }
    eprintln!(
        "A server can lie: compare with the fingerprint the project publishes itself (README, website, release \
         notes). Paste that fingerprint to trust it, or press Enter to stop:"
    );
    eprint!("> ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim();
    if answer.is_empty() {
        eprintln!("tbox-report: not joined; nothing was changed");
        return Ok(None);
    }
    if !keys.iter().any(|k| k.fingerprint == answer) {
        eprintln!("tbox-report: {answer:?} is not one of the listed keys; not joined, nothing was changed");
        return Ok(None);
    }
    Ok(Some(answer.to_owned()))
}

/// The project's capabilities and their descriptions, best effort.
fn capabilities(agent: &ureq::Agent, server: &str, project: &str) -> Vec<(String, String)> {
    let url = format!("{server}/api/v1/projects/{project}/capabilities");
    let Ok(a) = trust::get(agent, &url, 1 << 20) else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
    v["capabilities"]
        .as_array()
        .map(|caps| {
            caps.iter()
                .map(|c| {
                    (c["name"].as_str().unwrap_or("").to_owned(), c["description"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `$XDG_DATA_HOME/tbox` (default `~/.local/share/tbox`): checkouts.
fn data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| config::expand("~/.local/share"))
        .join("tbox")
}

/// `<os><version>-<arch>-<6 random hex>`, e.g. `debian12-x86_64-3f9c0a`: the name is public on
/// the waterfall, so it tells developers what the machine is, not who owns it or what it is
/// called (`$USER-hostname` did both).
fn default_builder() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        release.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim_matches('"').to_owned())
    };
    let os = format!("{}{}", field("ID").unwrap_or_else(|| "linux".into()), field("VERSION_ID").unwrap_or_default());
    let random = &super::new_uuid()[..6];
    let name: String = format!("{os}-{}-{random}", std::env::consts::ARCH)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .take(64)
        .collect();
    name.trim_matches('-').to_owned()
}

/// A TOML string (JSON's escapes are TOML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn new_config(server: &str, builder: &str, key: &Path, owner: Option<&str>) -> String {
    let mut t = String::from("# tbox-report's config, written by `tbox-report join`; see `tbox-report --help`.\n");
    t.push_str(&format!("server  = {}\n", quoted(server)));
    t.push_str(&format!("builder = {}\n", quoted(builder)));
    t.push_str(&format!("key     = {}\n", quoted(&key.display().to_string())));
    if let Some(o) = owner {
        t.push_str(&format!("owner   = {}\n", quoted(o)));
    }
    t.push_str(
        "# What this machine offers that recipes may require, e.g. [\"docker\"].\n\
         capabilities = []\n\
         # Steps run in a bubblewrap sandbox. \"none\" runs them with all your files in reach: don't.\n\
         sandbox = \"auto\"\n\
         # Whether a recipe that asks for the network gets it.\n\
         allow_network = false\n",
    );
    t
}

fn project_block(project: &str, pin: &str, repo: Option<&str>, branch: &str, workdir: &Path) -> String {
    let mut b = format!(
        "\n[[project]]\nname    = {}\nrecipe  = {}   # the project's key, pinned by `tbox-report join`\n",
        quoted(project),
        quoted(pin)
    );
    if let Some(repo) = repo {
        b.push_str(&format!("git     = {}   # the only source a recipe may name\n", quoted(repo)));
    }
    b.push_str(&format!("branch  = {}\nworkdir = {}\n", quoted(branch), quoted(&workdir.display().to_string())));
    b
}

/// Makes `name` this machine's builder name on `server`: the top-level `builder` for the
/// top-level server, else the `builder` of each of that server's projects. Everything else,
/// comments included, stays as the volunteer wrote it (toml_edit keeps them; a hand-made
/// line editor would not know a table from a string holding `[`).
pub fn set_builder(path: &Path, server: &str, name: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("{} is not TOML", path.display()))?;
    let same =
        |v: Option<&toml_edit::Item>| v.and_then(|v| v.as_str()).map(|s| s.trim_end_matches('/')) == Some(server);
    if same(doc.get("server")) {
        doc["builder"] = toml_edit::value(name);
    } else if let Some(projects) = doc.get_mut("project").and_then(|p| p.as_array_of_tables_mut()) {
        for p in projects.iter_mut().filter(|p| same(p.get("server"))) {
            p["builder"] = toml_edit::value(name);
        }
    }
    write_config(path, &doc.to_string())?;
    let changed = Config::load(path)?.sites().iter().any(|s| s.server == server && s.builder == name);
    anyhow::ensure!(changed, "{} does not name builder {name} for {server} after the change", path.display());
    Ok(())
}

/// Writes the config through a temporary file, after checking that it still loads.
fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(e) = Config::load(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        bail!("the changed config would not load ({e:#}); {} was left as it was", path.display());
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The config text without its `index`-th `[[project]]` (with its steps and sub-tables, and
/// the comments just above it); everything else stays as the volunteer wrote it.
fn remove_project(text: &str, index: usize) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("the config is not TOML")?;
    let projects = doc.get_mut("project").and_then(|p| p.as_array_of_tables_mut());
    match projects {
        Some(p) if index < p.len() => p.remove(index),
        _ => bail!("the config has no project number {}", index + 1),
    };
    Ok(doc.to_string())
}

/// `word` as one shell word, for the command lines printed to paste into a crontab (which also
/// gives `%` a meaning: it is escaped).
fn shell_word(word: &str) -> String {
    let quoted = shlex::try_quote(word).map_or_else(|_| format!("{word:?}"), |q| q.into_owned());
    quoted.replace('%', "\\%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_urls() -> anyhow::Result<()> {
        assert_eq!(split_url("https://t.example/projects/demo/")?, ("https://t.example".into(), "demo".into()));
        assert_eq!(
            split_url("http://127.0.0.1:8080/x/projects/a.b")?,
            ("http://127.0.0.1:8080/x".into(), "a.b".into())
        );
        assert!(split_url("https://t.example/demo").is_err());
        assert!(split_url("ftp://t.example/projects/demo").is_err());
        assert!(split_url("https://t.example/projects/a b").is_err());
        Ok(())
    }

    #[test]
    fn leaving_removes_one_project_and_keeps_the_rest() -> anyhow::Result<()> {
        let text = "server = \"x\" # mine\n\n# a's\n[[project]]\nname = \"a\"\n[[project.step]]\nname = \"s\"\n\
                    [project.env]\nA = \"1\"\n\n[[project]]\nname = \"b\" # keep\nrun = \"echo '[[project]]'\"\n";
        assert_eq!(
            remove_project(text, 0)?,
            "server = \"x\" # mine\n\n[[project]]\nname = \"b\" # keep\nrun = \"echo '[[project]]'\"\n"
        );
        assert_eq!(
            remove_project(text, 1)?,
            "server = \"x\" # mine\n\n# a's\n[[project]]\nname = \"a\"\n[[project.step]]\nname = \"s\"\n\
             [project.env]\nA = \"1\"\n"
        );
        assert!(remove_project(text, 2).is_err());
        Ok(())
    }

    #[test]
    fn builder_names_are_valid() {
        let n = default_builder();
        assert!(tbox_protocol::validate_name("builder", &n, 64).is_ok(), "{n}");
    }
}
