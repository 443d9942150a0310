//! `tbox-report check`: is everything in place for `run`?

use crate::cli::Common;
use crate::client::{Client, Sent};
use crate::config::{self, Config};
use crate::{exit, keyfile, spool};

pub fn run(common: &Common) -> anyhow::Result<u8> {
    let path = config::config_path(common.config.as_deref());
    let config = Config::load(&path)?;
    crate::say!("config   {} is valid: builder {} → {}", path.display(), config.builder, config.server);
    let key = keyfile::load(&config.key_path())?;
    crate::say!(
        "key      {} ({} bits, {})",
        config.key_path().display(),
        key.public_key().bits(),
        key.public_key().fingerprint()
    );
    let client = Client::new(&config.server, &config.builder, key.clone());
    let mut problems = 0;
    match client.get_as_builder(&format!("/api/v1/builders/{}", config.builder)) {
        Sent::Delivered(v) => {
            let status = v["status"].as_str().unwrap_or("?");
            let mine = key.public_key().fingerprint();
            let key_known = v["keys"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|k| k["fingerprint"] == mine.as_str() && k["revoked"] == false));
            crate::say!("server   reachable; builder {} is {status}", config.builder);
            if status != "active" {
                crate::say!(
                    "         ! reports are refused until an admin runs: tbox-server builder approve {}",
                    config.builder
                );
                problems += 1;
            }
            if !key_known {
                crate::say!("         ! the server does not know this key (or has revoked it)");
                problems += 1;
            }
            let listed = |field: &str, name: &str| {
                v[field].as_array().is_some_and(|a| a.iter().any(|p| p.as_str() == Some(name)))
            };
            for p in &config.projects {
                if listed("pending_projects", &p.name) {
                    crate::say!(
                        "         ! {} waits for approval: an admin runs tbox-server builder approve {}",
                        p.name,
                        config.builder
                    );
                    problems += 1;
                } else if status == "active" && !listed("projects", &p.name) {
                    crate::say!("         ! this builder may not report for {} (ask the project's admins)", p.name);
                    problems += 1;
                }
            }
        }
        Sent::Rejected { status: 404, .. } => {
            crate::say!(
                "server   reachable, but builder {} is not registered (tbox-report register --project P)",
                config.builder
            );
            problems += 1;
        }
        Sent::Rejected { status, message } => {
            crate::say!("server   answered {status}: {message}");
            problems += 1;
        }
        Sent::Unreachable(e) => {
            crate::say!("server   ! cannot reach {}: {e}", config.server);
            problems += 1;
        }
        Sent::NotTbox(e) => {
            crate::say!("server   ! {e}");
            problems += 1;
        }
    }
    let waiting = spool::pending(&config.spool_dir())?.len();
    crate::say!("spool    {} ({waiting} report(s) waiting)", config.spool_dir().display());
    for p in &config.projects {
        let workdir = config::expand(&p.workdir);
        let revision = super::git_revision(&workdir);
        let last = super::run::last_revision(&config, &p.name);
        let plan = match (&revision, p.git.is_some() || p.recipe.is_some()) {
            (_, true) => "fetches, then builds if the revision changed".to_owned(),
            (Some(r), false) if last.as_deref() == Some(r.as_str()) => {
                format!("skips: {r} was reported already")
            }
            (Some(r), false) => format!("builds revision {r}"),
            (None, false) => "builds (not a git checkout, so every run builds)".to_owned(),
        };
        match config.sandbox_for(p) {
            config::Mode::None => {
                crate::say!("sandbox  none for {}: its steps run with all your files in reach", p.name);
            }
            config::Mode::Auto => {
                let probe = config::state_dir().join("check-sandbox");
                match crate::sandbox::Sandbox::new(&workdir, &probe, false) {
                    Ok(s) => crate::say!("sandbox  {} works here", s.describe()),
                    Err(e) => {
                        crate::say!("sandbox  ! {e}");
                        problems += 1;
                    }
                }
                let _ = std::fs::remove_dir_all(&probe);
            }
        }
        match &p.recipe {
            Some(pin) => {
                crate::say!("project  {} ({}): {}; steps from the recipe signed by {pin}", p.name, p.branch, plan);
                problems += check_recipe(&config, p, pin);
            }
            None => {
                let steps: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
                crate::say!("project  {} ({}): {}; steps {}", p.name, p.branch, plan, steps.join(" → "));
            }
        }
        if !workdir.is_dir() && p.git.is_none() && p.recipe.is_none() {
            crate::say!("         ! workdir {} does not exist", workdir.display());
            problems += 1;
        }
    }
    if problems > 0 {
        crate::say!("{problems} problem(s) found");
        return Ok(exit::ERROR);
    }
    crate::say!("all good");
    Ok(exit::OK)
}

/// What `run` would think of the project's recipe now; the number of problems found.
fn check_recipe(config: &config::Config, p: &config::Project, pin: &str) -> usize {
    use crate::trust::{self, NoRecipe};
    match trust::obtain(&trust::agent(), config.server.trim_end_matches('/'), &p.name, pin) {
        Ok(v) => {
            let r = &v.recipe;
            crate::say!(
                "recipe   version {} signed by {}, expires {}; steps {}",
                r.version,
                v.key,
                r.expires.format("%Y-%m-%d %H:%M UTC"),
                r.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(" → ")
            );
            let missing: Vec<&str> =
                r.requires.iter().filter(|c| !config.capabilities.contains(c)).map(String::as_str).collect();
            if !missing.is_empty() {
                crate::say!("         requires {}, not in `capabilities`: `run` skips it", missing.join(", "));
            }
            if r.network && !config.network_for(p) {
                crate::say!("         needs the network, and allow_network is false: `run` skips it");
            }
            if r.allows_branch(&p.branch) {
                0
            } else {
                crate::say!("         ! does not allow branch {:?}: `run` refuses it", p.branch);
                1
            }
        }
        Err(NoRecipe::NonePublished(why)) => {
            crate::say!("recipe   {why}");
            0
        }
        Err(NoRecipe::Refused(why)) => {
            crate::say!("recipe   ! REFUSED: {why}");
            1
        }
        Err(NoRecipe::Unreachable(why)) => {
            crate::say!("recipe   ! {why}");
            1
        }
    }
}
