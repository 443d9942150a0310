//! The volunteer's config file (TOML) and where things live on disk (XDG directories).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tbox_protocol::{BranchName, DEFAULT_LIMITS, ResourceLimits, StepLimits};

pub use crate::sandbox::Mode;

/// `report.toml`. Unknown keys are refused so that a typo does not silently do nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the tbox server.
    pub server: String,
    /// This machine's registered builder name.
    pub builder: String,
    /// The private key (refused if group or others may read it).
    pub key: String,
    /// How to reach the volunteer (sent when registering).
    #[serde(default)]
    pub owner: Option<String>,
    /// Where reports wait while the server cannot be reached.
    #[serde(default)]
    pub spool: Option<String>,
    /// Largest log kept per step, in bytes; longer logs keep their head and tail.
    #[serde(default = "default_log_cap")]
    pub max_log_bytes: u64,
    /// What this machine offers that recipes may require (`docker`, `gpu`, …).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `"auto"` (bubblewrap; a step that cannot be sandboxed does not run) or `"none"`.
    #[serde(default)]
    pub sandbox: Mode,
    /// Whether steps may use the network when a recipe asks for it.
    #[serde(default)]
    pub allow_network: bool,
    /// `serve` takes no new build while the 1-minute load average is above this (as the
    /// PostgreSQL Buildfarm client's `max_load_avg`).
    #[serde(default)]
    pub max_load: Option<f64>,
    /// What each step may use (tasks, memory, disk); defaults on. A recipe may ask for less.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// When builds may start (hours, days, mains power, CPU time per day).
    #[serde(default)]
    pub schedule: crate::schedule::Schedule,
    /// `"low"` (default: steps run with nice 19 and the lowest best-effort I/O priority, so
    /// that the volunteer's own work comes first) or `"normal"`.
    #[serde(default)]
    pub priority: Priority,
    /// The projects this machine builds.
    #[serde(default, rename = "project")]
    pub projects: Vec<Project>,
}

/// The CPU and I/O priority of steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Low,
    Normal,
}

/// One `[[project]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub name: String,
    /// The server this project is built for (default: the top-level `server`): one config,
    /// and one `run` or `serve`, for projects on any number of servers.
    #[serde(default)]
    pub server: Option<String>,
    /// This machine's builder name on that server (default: the top-level `builder`), for a
    /// server where the usual name was taken.
    #[serde(default)]
    pub builder: Option<String>,
    /// This machine's private key for that server (default: the top-level `key`). `join` gives
    /// every further server a key of its own: a body signed for one server (a lease, a renewal,
    /// a report) then means nothing to another, so no server can replay it elsewhere.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default = "BranchName::main")]
    pub branch: BranchName,
    /// Where the source lives and steps run.
    pub workdir: String,
    /// If set: clone, or fetch and check out `branch`, before building.
    #[serde(default)]
    pub git: Option<String>,
    /// The project key pinned by `join` (`SHA256:…`): steps come from the project's recipe
    /// signed by it, not from this file.
    #[serde(default)]
    pub recipe: Option<String>,
    /// Overrides the top-level `sandbox` for this project.
    #[serde(default)]
    pub sandbox: Option<Mode>,
    /// Overrides the top-level `allow_network` for this project.
    #[serde(default)]
    pub allow_network: Option<bool>,
    /// Overrides the top-level `[limits]` for this project (field by field).
    #[serde(default)]
    pub limits: Option<ResourceLimits>,
    /// Requested builds `serve` takes for this project per day (UTC) at most.
    #[serde(default)]
    pub daily_budget: Option<u32>,
    /// Shown on the builder page; os, arch, kernel and cpus are detected.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Environment for every step, on top of PATH, HOME, LANG and TZ.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Globs (relative to the workdir) of files whose SHA-256 the report carries, for steps
    /// from this file; a recipe names its own.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// The steps, run in order. Plain data, so that they can one day come from a signed recipe.
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
}

/// One `[[project.step]]`: the same keys, and the same type, as a recipe's `[[step]]`, so
/// that a step means the same whoever wrote it.
pub type Step = tbox_protocol::RecipeStep;

fn default_log_cap() -> u64 {
    4 << 20
}

/// Default step timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "there is no config {} yet: `tbox-report join https://SERVER/projects/NAME --key SHA256:…` makes it \
                 (with the fingerprint the project publishes), or write one (see tbox's scripts/report.toml.example)",
                path.display()
            ),
            r => r.with_context(|| format!("cannot read config {}", path.display()))?,
        };
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))?;
        config.check().with_context(|| format!("in {}", path.display()))?;
        // A project's page works as well as the server's address (`join` takes the page).
        let mut config = config;
        config.server = crate::client::base_url(&config.server);
        for p in &mut config.projects {
            p.server = p.server.as_deref().map(crate::client::base_url);
        }
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        check_server("server", &self.server)?;
        tbox_protocol::validate_name("builder", &self.builder, 64)?;
        self.limits.validate("limits")?;
        self.schedule.validate()?;
        let mut names = std::collections::HashSet::new();
        for p in &self.projects {
            tbox_protocol::validate_name("project.name", &p.name, 64)?;
            if !names.insert(&p.name) {
                bail!(
                    "project {:?} is configured twice (a name may appear once, whatever its server: `run --project` \
                     and the state kept per project go by name)",
                    p.name
                );
            }
            if let Some(server) = &p.server {
                check_server(&format!("project {:?}: server", p.name), server)?;
            }
            if let Some(builder) = &p.builder {
                tbox_protocol::validate_name("project.builder", builder, 64)?;
            }
            match &p.recipe {
                Some(pin) => {
                    if !is_fingerprint(pin) {
                        bail!("project {:?}: recipe must be a key fingerprint, SHA256: and 64 hex digits", p.name);
                    }
                    if !p.steps.is_empty() {
                        bail!(
                            "project {:?}: a project built from its signed recipe takes its steps from the recipe; \
                             remove its [[project.step]] (or the recipe line, to build your own steps)",
                            p.name
                        );
                    }
                }
                None if p.steps.is_empty() => bail!("project {:?} has no [[project.step]]", p.name),
                None => {}
            }
            for (k, v) in &p.env {
                if v.contains('\0') || k.contains('\0') {
                    bail!("project {:?}: env {k:?} holds a NUL character, which no environment can", p.name);
                }
            }
            for s in &p.steps {
                if s.name.trim().is_empty() || s.name.len() > 200 {
                    bail!("project {:?}: every step needs a name (up to 200 bytes)", p.name);
                }
                if s.run.contains('\0') || s.env.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
                    bail!(
                        "project {:?}, step {:?}: a NUL character in run or env, which no command can hold",
                        p.name,
                        s.name
                    );
                }
                if let Some(t) = &s.timeout {
                    parse_duration(t).with_context(|| format!("project {:?}, step {:?}: timeout", p.name, s.name))?;
                }
                for g in &s.junit {
                    globset::Glob::new(g)
                        .with_context(|| format!("project {:?}, step {:?}: junit glob {g:?}", p.name, s.name))?;
                }
            }
            tbox_protocol::check_artifact_globs(&p.artifacts)
                .map_err(|e| anyhow::anyhow!("project {:?}: {e}", p.name))?;
            for g in &p.artifacts {
                globset::Glob::new(g).with_context(|| format!("project {:?}: artifacts glob {g:?}", p.name))?;
            }
            if let Some(l) = &p.limits {
                l.validate(&format!("project {:?}: limits", p.name))?;
            }
            for k in p.properties.keys() {
                tbox_protocol::validate_name("properties", k, 64)?;
            }
        }
        for c in &self.capabilities {
            tbox_protocol::validate_name("capabilities", c, 64)?;
        }
        // One key per server and name: the server knows the builder by one key at a time.
        let mut key_of_site: std::collections::HashMap<(&str, &str), &str> = std::collections::HashMap::new();
        for p in &self.projects {
            let key = p.key.as_deref().unwrap_or(&self.key);
            let site = (self.server_of(p), self.builder_of(p));
            if let Some(other) = key_of_site.insert(site, key).filter(|k| *k != key) {
                bail!(
                    "project {:?}: key {key:?}, while another project on {} as {} uses {other:?}: one key per server",
                    p.name,
                    site.0,
                    site.1
                );
            }
        }
        Ok(())
    }

    /// Whether steps of this project run sandboxed.
    pub fn sandbox_for(&self, p: &Project) -> Mode {
        p.sandbox.unwrap_or(self.sandbox)
    }

    /// What this project's steps may use, before a recipe asks for less: the project's
    /// `[project.limits]`, then the top-level `[limits]`, then the defaults, field by field.
    pub fn limits_for(&self, p: &Project) -> StepLimits {
        p.limits.unwrap_or_default().or(self.limits.or(DEFAULT_LIMITS))
    }

    /// Whether this project's steps may reach the network (when its recipe asks).
    pub fn network_for(&self, p: &Project) -> bool {
        p.allow_network.unwrap_or(self.allow_network)
    }

    /// The private key's path, with `~` expanded.
    pub fn key_path(&self) -> PathBuf {
        expand(&self.key)
    }

    /// The spool directory: one per server, so that a report never goes to another server
    /// than the one it was built for (two configs, two servers).
    pub fn spool_dir(&self) -> PathBuf {
        self.spool.as_deref().map(expand).unwrap_or_else(|| state_dir().join("spool").join(server_id(&self.server)))
    }

    /// Reports spooled by versions that had one spool for everything (top level of
    /// `state/spool`) move into this server's spool: they were all for the one server then.
    pub fn adopt_legacy_spool(&self) {
        if self.spool.is_some() {
            return;
        }
        let legacy = state_dir().join("spool");
        let Ok(entries) = std::fs::read_dir(&legacy) else { return };
        let target = self.spool_dir();
        // Only the reports of this config's projects on its top-level server: another config
        // (or a project on another server) must not take them elsewhere.
        let mine: Vec<&str> = self
            .projects
            .iter()
            .filter(|p| self.server_of(p) == self.server.trim_end_matches('/'))
            .map(|p| p.name.as_str())
            .collect();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") || !path.is_file() {
                continue;
            }
            let project = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["project"].as_str().map(str::to_owned));
            if project.is_some_and(|p| mine.contains(&p.as_str())) && std::fs::create_dir_all(&target).is_ok() {
                let sig = path.with_extension("sig");
                if sig.is_file() {
                    let _ = std::fs::rename(&sig, target.join(sig.file_name().unwrap_or_default()));
                }
                let _ = std::fs::rename(&path, target.join(e.file_name()));
            }
        }
    }

    /// Where a project's state of one kind lives (`last-revision`, `refused`, `locks`,
    /// `recipes`): per server, then per project.
    pub fn project_state(&self, kind: &str, project: &str) -> PathBuf {
        state_dir().join(kind).join(server_id(&self.server)).join(project)
    }

    /// The project called `name`.
    pub fn project(&self, name: &str) -> anyhow::Result<&Project> {
        self.projects.iter().find(|p| p.name == name).with_context(|| format!("no project {name:?} in the config"))
    }

    /// The server a project is built for, without a trailing `/`.
    pub fn server_of<'a>(&'a self, p: &'a Project) -> &'a str {
        p.server.as_deref().unwrap_or(&self.server).trim_end_matches('/')
    }

    /// This machine's builder name on a project's server.
    pub fn builder_of<'a>(&'a self, p: &'a Project) -> &'a str {
        p.builder.as_deref().unwrap_or(&self.builder)
    }

    /// The config as seen by one server: one per server (and builder name) the projects name,
    /// the top-level one first, each holding only its own projects, with its own spool and
    /// state. Everything that talks to a server works on one of these, so that no report, lease
    /// or key question ever goes to another server than the project's.
    pub fn sites(&self) -> Vec<Config> {
        let mut sites: Vec<Config> = Vec::new();
        let top = (self.server.trim_end_matches('/'), self.builder.as_str());
        let mut keys = vec![top];
        for p in &self.projects {
            let k = (self.server_of(p), self.builder_of(p));
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let key_of = |p: &Project| p.key.clone().unwrap_or_else(|| self.key.clone());
        for (server, builder) in keys {
            let projects: Vec<Project> = self
                .projects
                .iter()
                .filter(|p| (self.server_of(p), self.builder_of(p)) == (server, builder))
                .cloned()
                .collect();
            // The top-level server is a site even without projects (`check`, `flush`, `register`).
            if projects.is_empty() && (server, builder) != top {
                continue;
            }
            let own_spool = (server, builder) != top;
            let key = projects.first().map_or_else(|| self.key.clone(), key_of);
            sites.push(Config {
                server: server.to_owned(),
                builder: builder.to_owned(),
                key,
                // A spool set by hand is the top-level server's; others get a folder in it.
                spool: self
                    .spool
                    .as_ref()
                    .map(|s| if own_spool { format!("{s}/{}", server_id(server)) } else { s.clone() }),
                projects,
                ..self.clone()
            });
        }
        sites
    }

    /// The site (see [`Config::sites`]) that builds `project`.
    pub fn site_of(&self, project: &str) -> anyhow::Result<Config> {
        self.project(project)?;
        self.sites()
            .into_iter()
            .find(|s| s.projects.iter().any(|p| p.name == project))
            .with_context(|| format!("no server in the config builds {project}"))
    }

    /// Why no build should start now, if one should not: the schedule, then the load average.
    pub fn not_now(&self) -> Option<String> {
        if let Some(why) = self.schedule.closed(&chrono::Local::now()) {
            return Some(why);
        }
        let max = self.max_load?;
        let text = std::fs::read_to_string("/proc/loadavg").ok()?;
        let load: f64 = text.split_whitespace().next()?.parse().ok()?;
        (load > max).then(|| format!("the load average is {load:.2}, above max_load = {max}"))
    }
}

fn check_server(what: &str, server: &str) -> anyhow::Result<()> {
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("{what} must be an http:// or https:// URL, got {server:?}");
    }
    Ok(())
}

/// A directory name for a server: `https://tbox.example.org:8443/x` → `tbox.example.org_8443_x`.
pub fn server_id(server: &str) -> String {
    let bare = server.split_once("://").map_or(server, |(_, rest)| rest).trim_end_matches('/');
    let id: String =
        bare.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    // Never `.`/`..` or hidden: those would be other directories.
    if id.is_empty() || id.starts_with('.') { format!("server{id}") } else { id }
}

pub use tbox_protocol::is_fingerprint;

/// `90s`, `30m`, `2h`, `1h30m`, `1d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    // The same rule as recipes' timeouts (tbox_protocol), so a step means the same in both.
    tbox_protocol::parse_duration(s).with_context(|| format!("{s:?} is not a duration like 30m, 2h or 90s"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

/// `~/x` → `$HOME/x`.
pub fn expand(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None if path == "~" => home(),
        None => PathBuf::from(path),
    }
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute()).unwrap_or_else(|| home().join(fallback))
}

/// `$XDG_CONFIG_HOME/tbox` (default `~/.config/tbox`).
pub fn config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("tbox")
}

/// `$XDG_STATE_HOME/tbox` (default `~/.local/state/tbox`): last revisions, locks, the spool.
pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state").join("tbox")
}

/// The config file to use: `--config`, else `TBOX_CONFIG` (clap fills it in), else the default.
pub fn config_path(given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| config_dir().join("report.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() -> anyhow::Result<()> {
        assert_eq!(parse_duration("30m")?, Duration::from_secs(1800));
        assert_eq!(parse_duration("1h30m")?, Duration::from_secs(5400));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("0s").is_err());
        Ok(())
    }

    #[test]
    fn each_server_has_its_own_directory_name() {
        assert_eq!(server_id("https://tbox.example.org/"), "tbox.example.org");
        assert_eq!(server_id("http://127.0.0.1:8080/tbox"), "127.0.0.1_8080_tbox");
        assert_ne!(server_id("http://a:1"), server_id("http://a:2"));
        assert_eq!(server_id("http://.."), "server..");
        assert!(!server_id("http://x/../y").contains('/'));
    }

    #[test]
    fn design_example_config_parses() -> anyhow::Result<()> {
        let text = include_str!("../../scripts/report.toml.example");
        let c: Config = toml::from_str(text)?;
        c.check()?;
        assert_eq!(c.projects[0].steps.len(), 2);
        assert_eq!(c.projects[0].steps[1].kind, Some(tbox_protocol::StepKind::Test));
        Ok(())
    }
}
