//! `tbox-report pause [--for DURATION]` and `resume`: the volunteer needs the machine.
//!
//! A pause is a file in the state directory, so it holds for every config of this user and
//! across restarts; `run` and `serve` read it before any new build (`serve` also while it
//! waits for work), and its end or `resume` lifts it. A build already running finishes.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::cli::{PauseArgs, ResumeArgs};
use crate::{config, exit};

/// A pause in force: until when, or until `resume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    pub until: Option<DateTime<Utc>>,
}

impl std::fmt::Display for Paused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.until {
            Some(t) => write!(f, "paused until {} UTC (tbox-report resume ends it now)", t.format("%Y-%m-%d %H:%M")),
            None => write!(f, "paused until `tbox-report resume`"),
        }
    }
}

fn file() -> PathBuf {
    config::state_dir().join("paused")
}

/// The pause in force now, if any. A pause whose time has passed is no pause.
pub fn paused() -> Option<Paused> {
    let text = std::fs::read_to_string(file()).ok()?;
    let text = text.trim();
    if text == "indefinitely" {
        return Some(Paused { until: None });
    }
    let until = DateTime::parse_from_rfc3339(text.strip_prefix("until ")?).ok()?.with_timezone(&Utc);
    (until > Utc::now()).then_some(Paused { until: Some(until) })
}

pub fn pause(args: &PauseArgs) -> anyhow::Result<u8> {
    let parsed = match args.duration.as_deref().map(config::parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tbox-report: --for: {e:#}");
            return Ok(exit::USAGE);
        }
    };
    let until = match parsed {
        None => None,
        Some(d) => {
            let Some(d) = chrono::TimeDelta::from_std(d).ok().filter(|d| *d <= chrono::TimeDelta::days(366)) else {
                eprintln!("tbox-report: --for: at most 366 days (without --for, the pause lasts until `resume`)");
                return Ok(exit::USAGE);
            };
            Some(Utc::now() + d)
        }
    };
    let path = file();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = match until {
        Some(t) => format!("until {}\n", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        None => "indefinitely\n".to_owned(),
    };
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    crate::say!("{}: run and serve start no new build (one running now finishes)", Paused { until });
    Ok(exit::OK)
}

pub fn resume(_args: &ResumeArgs) -> anyhow::Result<u8> {
    match std::fs::remove_file(file()) {
        Ok(()) => crate::say!("resumed: run and serve build again"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::say!("not paused"),
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", file().display())),
    }
    Ok(exit::OK)
}
