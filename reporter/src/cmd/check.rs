//! `tbox-report check`: is everything in place for `run`?

use crate::cli::Common;
use crate::client::{Client, Sent};
use crate::config::{self, Config};
use crate::{exit, keyfile, spool};

pub fn run(common: &Common) -> anyhow::Result<u8> {
    let path = config::config_path(common.config.as_deref());
    let all = Config::load(&path)?;
    crate::say!("config   {} is valid: builder {} → {}", path.display(), all.builder, all.server);
    let key = keyfile::load(&all.key_path())?;
    crate::say!(
        "key      {} ({} bits, {})",
        all.key_path().display(),
        key.public_key().bits(),
        key.public_key().fingerprint()
    );
    let mut problems = 0;
    // The sandbox is tried once per set of limits, not once per project.
    let mut probed = std::collections::HashSet::new();
    let sites = all.sites();
    for config in &sites {
        if sites.len() > 1 {
            crate::say!("--- {} (builder {})", config.server, config.builder);
        }
        let key = if config.key_path() == all.key_path() { key.clone() } else { keyfile::load(&config.key_path())? };
        if sites.iter().any(|s| s.server != config.server && s.key_path() == config.key_path()) {
            crate::say!(
                "key      ! {} is also this machine's key on another server: either server could replay what \
                 it signs (leases, reports) to the other. Give this server a key of its own (`tbox-report keygen \
                 --out FILE`, `key = \"FILE\"` in its projects, then `tbox-report register --project P`)",
                config.key_path().display()
            );
            problems += 1;
        }
        problems += check_site(config, &key, &mut probed);
    }
    if problems > 0 {
        crate::say!("{problems} problem(s) found");
        return Ok(exit::ERROR);
    }
    crate::say!("all good");
    Ok(exit::OK)
}

/// What one server says of this machine, and its projects; the number of problems found.
fn check_site(
    config: &Config,
    key: &tbox_protocol::PrivateKey,
    probed: &mut std::collections::HashSet<(u32, u64, u64)>,
) -> usize {
    let client = Client::new(&config.server, &config.builder, key.clone());
    let mut problems = 0;
    match client.get_as_builder(&format!("/api/v1/builders/{}", config.builder)) {
        Sent::Delivered(v) => {
            let status = crate::client::printable(v["status"].as_str().unwrap_or("?"));
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
    match spool::pending(&config.spool_dir()) {
        Ok(waiting) => crate::say!("spool    {} ({} report(s) waiting)", config.spool_dir().display(), waiting.len()),
        Err(e) => {
            crate::say!("spool    ! {e:#}");
            problems += 1;
        }
    }
    for p in &config.projects {
        let workdir = config::expand(&p.workdir);
        let revision = super::git_revision(&workdir);
        let last = super::run::last_revision(config, &p.name);
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
                crate::say!(
                    "sandbox  none for {}: its steps run with all your files in reach, and only their time and \
                     output are limited",
                    p.name
                );
            }
            config::Mode::Auto => {
                let l = config.limits_for(p);
                if probed.insert((l.processes, l.memory, l.disk)) {
                    problems += protections(&workdir, l);
                }
            }
        }
        match &p.recipe {
            Some(pin) => {
                crate::say!(
                    "project  {} ({}): {}; steps from the project's signed recipe (keys checked from your pin {pin})",
                    p.name,
                    p.branch,
                    plan
                );
                problems += check_recipe(config, p, pin);
            }
            None => {
                let steps: Vec<String> = p.steps.iter().map(|s| crate::client::printable(&s.name)).collect();
                crate::say!("project  {} ({}): {}; steps {}", p.name, p.branch, plan, steps.join(" → "));
            }
        }
        if !workdir.is_dir() && p.git.is_none() && p.recipe.is_none() {
            crate::say!("         ! workdir {} does not exist", workdir.display());
            problems += 1;
        }
    }
    problems
}

/// What protects this machine from a project's steps, found by running a step in the sandbox
/// as a build would; the number of problems found.
fn protections(workdir: &std::path::Path, limits: tbox_protocol::StepLimits) -> usize {
    use crate::sandbox::{Sandbox, watch};
    let probe = config::state_dir().join("work").join(format!("check-{}", std::process::id()));
    // Before the first clone, an empty stand-in.
    let stand_in = probe.join("checkout");
    let workdir = if workdir.is_dir() {
        workdir
    } else {
        let _ = std::fs::create_dir_all(&stand_in);
        stand_in.as_path()
    };
    let sandbox = match Sandbox::new(workdir, &probe.join("sandbox"), false, limits) {
        Ok(s) => s,
        Err(e) => {
            crate::say!("sandbox  ! {e}");
            let _ = std::fs::remove_dir_all(&probe);
            return 1;
        }
    };
    let mut problems = 0;
    // The step reports what it sees: its limits.
    let script = "cat /proc/self/limits";
    let log_path = probe.join("probe.log");
    let seen = std::fs::File::create(&log_path).ok().map(|log| {
        let env = std::collections::BTreeMap::new();
        let spec = crate::runner::Spec {
            command: script,
            workdir,
            env: &env,
            timeout: std::time::Duration::from_secs(60),
            max_output: 1 << 20,
            sandbox: Some(&sandbox),
            low_priority: false,
        };
        (crate::runner::run(&spec, &log, |_| {}), std::fs::read_to_string(&log_path).unwrap_or_default())
    });
    let Some((crate::runner::Ending::Exited(0), out)) = seen else {
        crate::say!("sandbox  ! a trial step did not run in the sandbox: {:?}", seen.map(|(e, _)| e));
        let _ = std::fs::remove_dir_all(&probe);
        return 1;
    };
    crate::say!(
        "sandbox  {} works here: the system read-only ({} private entries hidden), the checkout at {}, HOME at \
         {}, no network unless a recipe asks and you allow it",
        bwrap_version(),
        sandbox.masked(),
        crate::sandbox::WORKDIR,
        crate::sandbox::HOME
    );
    let limit_of = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next().map(str::to_owned))
    };
    let nproc = limit_of("Max processes");
    // Joined before the step starts (between fork and exec); a step that cannot get one does
    // not run at all.
    crate::say!(
        "keyring  each step gets a new, empty session keyring, and cannot make keyring calls at all (seccomp): \
         yours are out of its reach"
    );
    crate::say!(
        "kernel   /proc/sys and the like read-only, /proc/keys hidden, no memory outside files (memfd), {}",
        if sandbox.nests_user_namespaces() {
            "but this bwrap (before 0.8) cannot forbid a step its own user namespaces"
        } else {
            "no user namespaces of its own"
        }
    );
    let root = nix::unistd::getuid().is_root();
    match nproc.as_deref() {
        Some(n) if n == limits.processes.to_string() && !root => crate::say!(
            "limits   {} tasks per step: held by the kernel (RLIMIT_NPROC in the step's own user namespace)",
            limits.processes
        ),
        _ if root => crate::say!(
            "limits   {} tasks per step: only measured (every 0.2 s), as tbox-report runs as root and the kernel \
             does not hold root to a process limit (warning: run tbox-report as an ordinary user)",
            limits.processes
        ),
        other => {
            crate::say!("limits   ! the step's process limit is {other:?}, not {}", limits.processes);
            problems += 1;
        }
    }
    crate::say!(
        "         {} of memory per step: the step's processes measured every 0.2 s, the step ended past it; the OOM \
         killer takes a step before anything else",
        tbox_protocol::human_size(limits.memory)
    );
    crate::say!(
        "         {} of disk per step (checkout, HOME and /tmp, files deleted but open, at least 4 KiB a file): \
         measured at least every few seconds, the step ended past it; no single file larger, by the kernel \
         (RLIMIT_FSIZE); the checkout itself is stopped past it too",
        tbox_protocol::human_size(limits.disk)
    );
    crate::say!(
        "         cgroups are not used: the limits above hold the same from cron, from a terminal and from systemd"
    );
    if watch::in_memory(sandbox.scratch()) {
        crate::say!(
            "tmp      ! the steps' /tmp is in {}, which is in memory (tmpfs): set XDG_STATE_HOME to a disk",
            sandbox.scratch().display()
        );
        problems += 1;
    } else {
        crate::say!(
            "tmp      the steps' /tmp, /var/tmp and /dev/shm are on disk, under {}",
            config::state_dir().join("work").display()
        );
    }
    let _ = std::fs::remove_dir_all(&probe);
    problems
}

/// `bubblewrap 0.8.0`, or just `bubblewrap`.
fn bwrap_version() -> String {
    std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bubblewrap".into())
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
            if r.allows_branch(p.branch.as_str()) {
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
