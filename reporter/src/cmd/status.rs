//! `tbox-report status`: what this machine does, in one place: the pause, the schedule, the
//! build running now, `serve`, and per server its approval and per project the last build
//! (from this machine's own record) and the next work.

use chrono::Local;
use serde_json::{Value, json};

use super::run as build;
use crate::cli::StatusArgs;
use crate::client::printable;
use crate::config::{Config, Priority};
use crate::{exit, history};

pub fn run(args: &StatusArgs) -> anyhow::Result<u8> {
    let (config, sites) = super::load_sites(&args.common)?;
    let now = Local::now();
    let paused = super::pause::paused();
    let closed = config.not_now();
    let next_open = config.schedule.next_open(&now).filter(|_| closed.is_some());
    let serve = super::serve::running();
    let building = build::building();
    let mut servers = Vec::new();
    for (site, client) in &sites {
        if site.projects.is_empty() && sites.len() > 1 {
            continue;
        }
        let standing = build::standing(site, client);
        // The server's word, shown: escaped and short, in the JSON as on the terminal.
        let state: String =
            printable(standing.as_ref().map_or("unreachable", |s| s.status.as_str())).chars().take(64).collect();
        let projects: Vec<Value> = site
            .projects
            .iter()
            .map(|p| {
                let refusal = standing.as_ref().and_then(|s| s.refusal(site, &p.name));
                let next = match (&paused, &refusal, &closed) {
                    (Some(pause), _, _) => format!("none while {pause}"),
                    (None, Some(why), _) => format!("none: {why}"),
                    (None, None, Some(why)) => match &next_open {
                        Some(t) => format!("from {} ({why})", t.format("%a %H:%M")),
                        None => format!("none: {why}"),
                    },
                    (None, None, None) if serve.is_some() => {
                        "requests as they come (serve is running), and a build when the revision changes".to_owned()
                    }
                    (None, None, None) => "at the next `tbox-report run` (cron), when the revision changed".to_owned(),
                };
                let limits = config.limits_for(p);
                json!({
                    "name": p.name,
                    "branch": p.branch.as_str(),
                    "recipe": p.recipe,
                    "last_build": history::last(&p.name, &site.server),
                    "next": next,
                    "limits": {
                        "processes": limits.processes,
                        "memory": limits.memory,
                        "disk": limits.disk,
                        "sandbox": config.sandbox_for(p) == crate::config::Mode::Auto,
                        "network": config.network_for(p),
                    },
                    "daily_budget": p.daily_budget,
                })
            })
            .collect();
        servers.push(json!({
            "server": site.server,
            "builder": site.builder,
            "state": state,
            "spooled": crate::spool::pending(&site.spool_dir()).map(|v| v.len()).unwrap_or(0),
            "projects": projects,
        }));
    }
    let status = json!({
        "paused": paused.as_ref().map(|p| json!({ "until": p.until })),
        "schedule": {
            "open": closed.is_none(),
            "why_not": closed,
            "next_open": next_open.map(|t| t.to_rfc3339()),
            "cpu_today_seconds": (crate::schedule::cpu::used_on(now.date_naive()).as_secs_f64() * 10.0).round() / 10.0,
            "cpu_per_day": config.schedule.cpu_per_day,
        },
        "priority": if config.priority == Priority::Low { "low" } else { "normal" },
        "serve": serve,
        "building": building,
        "servers": servers,
    });
    if args.json {
        crate::say!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        show(&config, &status);
    }
    Ok(exit::OK)
}

/// The status in words.
fn show(config: &Config, s: &Value) {
    let str_of = |v: &Value| printable(v.as_str().unwrap_or("?"));
    match s["paused"]["until"].as_str() {
        _ if s["paused"].is_null() => crate::say!("paused     no"),
        Some(t) => crate::say!("paused     until {} (tbox-report resume ends it)", local(t)),
        None => crate::say!("paused     until `tbox-report resume`"),
    }
    let sch = &s["schedule"];
    let mut rules = Vec::new();
    if let Some(h) = &config.schedule.hours {
        rules.push(match h {
            crate::schedule::Hours::One(r) => format!("hours {r}"),
            crate::schedule::Hours::Many(v) => format!("hours {}", v.join(", ")),
        });
    }
    if let Some(d) = &config.schedule.days {
        rules.push(format!("days {}", d.join(" ")));
    }
    if config.schedule.on_ac_power {
        rules.push("on mains power only".into());
    }
    if let Some(c) = &config.schedule.cpu_per_day {
        let used = std::time::Duration::from_secs_f64(sch["cpu_today_seconds"].as_f64().unwrap_or(0.0));
        rules.push(format!("{c} of CPU a day ({} used today)", crate::schedule::human(used)));
    }
    if let Some(l) = config.max_load {
        rules.push(format!("load below {l}"));
    }
    let rules = if rules.is_empty() { "any time".to_owned() } else { rules.join("; ") };
    match sch["why_not"].as_str() {
        None => crate::say!("schedule   {rules}: builds may start now"),
        Some(why) => crate::say!(
            "schedule   {rules}: no build starts now ({why}){}",
            sch["next_open"].as_str().map(|t| format!("; next from {}", local(t))).unwrap_or_default()
        ),
    }
    crate::say!(
        "priority   {}",
        if s["priority"] == "low" { "low: steps run with nice 19 and the lowest I/O priority" } else { "normal" }
    );
    match &s["serve"] {
        Value::Null => crate::say!("serve      not running (builds happen when cron runs `tbox-report run`)"),
        v => crate::say!("serve      running, pid {}, since {}", v["pid"], local(v["since"].as_str().unwrap_or("?"))),
    }
    match &s["building"] {
        Value::Null => crate::say!("building   nothing now"),
        b => crate::say!(
            "building   {} for {}, since {} (pid {})",
            str_of(&b["project"]),
            str_of(&b["server"]),
            local(b["since"].as_str().unwrap_or("?")),
            b["pid"]
        ),
    }
    for server in s["servers"].as_array().into_iter().flatten() {
        crate::say!();
        let state = match server["state"].as_str().unwrap_or("?") {
            "active" => "approved".to_owned(),
            "pending" => "PENDING approval by an admin".to_owned(),
            "unknown" => "NOT REGISTERED (tbox-report register --project P)".to_owned(),
            "unreachable" => "cannot be reached now (reports wait in the spool)".to_owned(),
            other => printable(other),
        };
        crate::say!("{} as builder {}: {state}", str_of(&server["server"]), str_of(&server["builder"]));
        if server["spooled"].as_u64().is_some_and(|n| n > 0) {
            crate::say!("  {} report(s) wait in the spool (tbox-report flush)", server["spooled"]);
        }
        for p in server["projects"].as_array().into_iter().flatten() {
            let l = &p["limits"];
            crate::say!(
                "  {} ({}) {}",
                str_of(&p["name"]),
                str_of(&p["branch"]),
                if p["recipe"].is_null() {
                    "with your own steps".to_owned()
                } else {
                    format!("recipe signed by {}", str_of(&p["recipe"]))
                }
            );
            match &p["last_build"] {
                Value::Null => crate::say!("    last build  none yet"),
                b => crate::say!(
                    "    last build  {} {} ({}) {}",
                    local(b["finished_at"].as_str().unwrap_or("?")),
                    str_of(&b["result"]),
                    str_of(&b["report"]),
                    b["url"].as_str().map(printable).unwrap_or_default()
                ),
            }
            crate::say!("    next        {}", str_of(&p["next"]));
            crate::say!(
                "    limits      {} tasks, {} memory, {} disk per step; {}; network {}",
                l["processes"],
                tbox_protocol::human_size(l["memory"].as_u64().unwrap_or(0)),
                tbox_protocol::human_size(l["disk"].as_u64().unwrap_or(0)),
                if l["sandbox"] == true { "sandboxed" } else { "NOT sandboxed (sandbox = \"none\")" },
                if l["network"] == true { "if the recipe asks" } else { "never" }
            );
        }
    }
}

/// An RFC 3339 time in local time, to the minute.
fn local(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|_| printable(t))
}
