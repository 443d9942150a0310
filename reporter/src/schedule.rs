//! `[schedule]`: when this machine may build (local time), as a volunteer's client is expected
//! to allow (BOINC's "compute only between", "only on these days", "not on batteries").
//! `run` (without `--force`) and `serve` start no build outside it; a build running when a
//! window closes finishes.

use std::path::Path;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Datelike as _, NaiveTime, TimeDelta, TimeZone, Timelike as _, Weekday};
use serde::Deserialize;

/// `hours = "22:00-07:00"` or a list of such ranges.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Hours {
    One(String),
    Many(Vec<String>),
}

/// The `[schedule]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Ranges of the day when builds may start; none: any time.
    #[serde(default)]
    pub hours: Option<Hours>,
    /// Days when builds may start (`mon` … `sun`); none: every day. A range past midnight
    /// belongs to the day it starts on.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Only while the machine is on mains power, where it can tell (a machine without a
    /// battery is always on mains power).
    #[serde(default)]
    pub on_ac_power: bool,
    /// CPU time (user + system, of every build's processes) this machine gives per day, all
    /// projects together, like `30m` or `3h`; once spent, no new build starts until midnight.
    #[serde(default)]
    pub cpu_per_day: Option<String>,
}

/// A range of the day, `from` included, `to` excluded; past midnight when `to <= from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: NaiveTime,
    pub to: NaiveTime,
}

impl Window {
    fn parse(s: &str) -> anyhow::Result<Window> {
        let (a, b) = s.split_once('-').with_context(|| format!("{s:?} is not a range like \"22:00-07:00\""))?;
        let time = |t: &str| {
            NaiveTime::parse_from_str(t.trim(), "%H:%M")
                .with_context(|| format!("{t:?} in {s:?} is not a time of day like 22:00"))
        };
        let (from, to) = (time(a)?, time(b)?);
        if from == to {
            bail!("{s:?} is empty; for all day, leave `hours` out");
        }
        Ok(Window { from, to })
    }

    /// Whether `t` is inside; and if it is, whether it is in the part after midnight.
    fn holds(&self, t: NaiveTime) -> Option<bool> {
        if self.from < self.to {
            (self.from <= t && t < self.to).then_some(false)
        } else if t >= self.from {
            Some(false)
        } else {
            (t < self.to).then_some(true)
        }
    }
}

impl Schedule {
    /// Checks every value, so that a typo is said when the config loads, not at night.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.windows()?;
        self.weekdays()?;
        self.cpu_budget()?;
        Ok(())
    }

    fn cpu_budget(&self) -> anyhow::Result<Option<std::time::Duration>> {
        self.cpu_per_day.as_deref().map(crate::config::parse_duration).transpose().context("schedule.cpu_per_day")
    }

    fn windows(&self) -> anyhow::Result<Vec<Window>> {
        let ranges: Vec<&str> = match &self.hours {
            None => Vec::new(),
            Some(Hours::One(s)) => vec![s.as_str()],
            Some(Hours::Many(v)) if v.is_empty() => bail!("schedule.hours is an empty list: no hour would be allowed"),
            Some(Hours::Many(v)) => v.iter().map(String::as_str).collect(),
        };
        ranges.into_iter().map(|r| Window::parse(r).context("schedule.hours")).collect()
    }

    fn weekdays(&self) -> anyhow::Result<Option<Vec<Weekday>>> {
        let Some(days) = &self.days else { return Ok(None) };
        if days.is_empty() {
            bail!("schedule.days is an empty list: no day would be allowed");
        }
        days.iter()
            .map(|d| {
                d.parse::<Weekday>().map_err(|_| anyhow::anyhow!("schedule.days: {d:?} is not a day like \"mon\""))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Some)
    }

    /// Why no build may start at `now`, if one may not.
    pub fn closed<Tz: TimeZone>(&self, now: &DateTime<Tz>) -> Option<String> {
        if let Some(why) = self.closed_by_clock(now) {
            return Some(why);
        }
        if let Ok(Some(budget)) = self.cpu_budget() {
            let used = cpu::used_on(now.date_naive());
            if used >= budget {
                return Some(format!(
                    "today's CPU time is spent ({} used, schedule.cpu_per_day = {})",
                    human(used),
                    self.cpu_per_day.as_deref().unwrap_or_default()
                ));
            }
        }
        (self.on_ac_power && on_battery(Path::new("/sys/class/power_supply")))
            .then(|| "the machine is on battery (schedule.on_ac_power)".to_owned())
    }

    fn closed_by_clock<Tz: TimeZone>(&self, now: &DateTime<Tz>) -> Option<String> {
        let windows = self.windows().unwrap_or_default();
        let days = self.weekdays().unwrap_or_default();
        let t = now.time();
        let today = now.weekday();
        // The day a window opened on: yesterday, for the part of a range after midnight.
        let open = if windows.is_empty() {
            Some(today)
        } else {
            windows
                .iter()
                .find_map(|w| w.holds(t).map(|after_midnight| if after_midnight { today.pred() } else { today }))
        };
        let Some(day) = open else {
            return Some("outside the hours of schedule.hours".to_owned());
        };
        match days {
            Some(days) if !days.contains(&day) => Some("not a day of schedule.days".to_owned()),
            _ => None,
        }
    }

    /// When the clock next allows a build, if not now (to the minute; within 8 days, or never).
    pub fn next_open<Tz: TimeZone>(&self, now: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        let start = now.clone() - TimeDelta::seconds(i64::from(now.second()));
        (1..=8 * 24 * 60).map(|m| start.clone() + TimeDelta::minutes(m)).find(|t| self.closed_by_clock(t).is_none())
    }
}

/// `2h05m`, `40s`.
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m"),
        (h, m) => format!("{h}h{m:02}m"),
    }
}

/// CPU time used by builds, per local day, kept in the state directory (one line: the day and
/// the seconds), so that `run` from cron and `serve` count together.
pub mod cpu {
    use std::time::Duration;

    use chrono::NaiveDate;

    fn file() -> std::path::PathBuf {
        crate::config::state_dir().join("cpu-today")
    }

    /// CPU time used by builds on `day`.
    pub fn used_on(day: NaiveDate) -> Duration {
        let text = std::fs::read_to_string(file()).unwrap_or_default();
        let mut words = text.split_whitespace();
        match (words.next().and_then(|d| d.parse::<NaiveDate>().ok()), words.next().and_then(|s| s.parse().ok())) {
            (Some(d), Some(secs)) if d == day => Duration::from_secs_f64(secs),
            _ => Duration::ZERO,
        }
    }

    /// Adds what a build used, to today's count.
    pub fn spend(used: Duration) {
        let today = chrono::Local::now().date_naive();
        let total = used_on(today) + used;
        let _ = std::fs::create_dir_all(crate::config::state_dir());
        let _ = std::fs::write(file(), format!("{today} {:.1}\n", total.as_secs_f64()));
    }

    /// User + system CPU time of this process's waited-for children so far (every step, and
    /// what each step started, once reaped).
    pub fn children() -> Duration {
        use nix::sys::resource::{UsageWho, getrusage};
        let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) else { return Duration::ZERO };
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(tv.tv_sec().max(0) as u64) + Duration::from_micros(tv.tv_usec().max(0) as u64)
        };
        t(usage.user_time()) + t(usage.system_time())
    }
}

/// Whether the machine runs on battery: it has a battery, and no mains supply is online.
/// A machine that says nothing (a server, a VM) is on mains power.
pub fn on_battery(supplies: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(supplies) else { return false };
    let read =
        |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_owned()).unwrap_or_default();
    let (mut battery, mut mains_online) = (false, false);
    for e in entries.flatten() {
        let dir = e.path();
        match read(&dir, "type").as_str() {
            "Battery" => battery |= read(&dir, "present") != "0",
            "Mains" | "USB" => mains_online |= read(&dir, "online") == "1",
            _ => {}
        }
    }
    battery && !mains_online
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, Utc};

    fn at(day: u32, h: u32, m: u32) -> DateTime<Utc> {
        // 2026-12-07 is a Monday.
        NaiveDate::from_ymd_opt(2026, 12, day).unwrap().and_hms_opt(h, m, 0).unwrap().and_utc()
    }

    fn schedule(toml_text: &str) -> Schedule {
        let s: Schedule = toml::from_str(toml_text).unwrap();
        s.validate().unwrap();
        s
    }

    #[test]
    fn a_night_range_wraps_midnight_and_belongs_to_its_first_day() {
        let s = schedule("hours = \"22:00-07:00\"\ndays = [\"fri\", \"sat\"]");
        assert!(s.closed(&at(11, 21, 59)).is_some(), "Friday before the night");
        assert!(s.closed(&at(11, 22, 0)).is_none(), "Friday night");
        assert!(s.closed(&at(12, 6, 59)).is_none(), "Saturday morning: still Friday's night");
        assert!(s.closed(&at(12, 7, 0)).is_some(), "the range ends at 07:00");
        assert!(s.closed(&at(14, 3, 0)).is_some(), "Monday 03:00 is Sunday's night, not allowed");
        assert!(s.closed(&at(13, 3, 0)).is_none(), "Sunday 03:00 is Saturday's night");
        assert_eq!(s.next_open(&at(7, 12, 0)), Some(at(11, 22, 0)));
        assert_eq!(s.next_open(&at(11, 23, 0)), Some(at(11, 23, 1)), "open now: the next minute");
    }

    #[test]
    fn several_ranges_and_no_hours() {
        let s = schedule("hours = [\"12:00-13:00\", \"19:30-23:00\"]");
        assert!(s.closed(&at(7, 12, 30)).is_none());
        assert!(s.closed(&at(7, 14, 0)).unwrap().contains("schedule.hours"));
        assert!(s.closed(&at(7, 19, 30)).is_none());
        assert!(schedule("").closed(&at(7, 4, 0)).is_none());
        assert!(schedule("days = [\"sun\"]").closed(&at(7, 4, 0)).unwrap().contains("schedule.days"));
    }

    #[test]
    fn nonsense_is_refused_when_the_config_loads() {
        for bad in [
            "hours = \"22-7\"",
            "hours = \"25:00-07:00\"",
            "hours = \"10:00-10:00\"",
            "hours = []",
            "days = [\"someday\"]",
            "days = []",
        ] {
            let s: Schedule = toml::from_str(bad).unwrap();
            assert!(s.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<Schedule>("hour = \"22:00-07:00\"").is_err(), "a typo in a key");
    }

    #[test]
    fn battery_is_told_by_the_power_supplies() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("tbox-power-{}", std::process::id()));
        let supply = |name: &str, files: &[(&str, &str)]| -> std::io::Result<()> {
            let d = dir.join(name);
            std::fs::create_dir_all(&d)?;
            files.iter().try_for_each(|(f, v)| std::fs::write(d.join(f), format!("{v}\n")))
        };
        assert!(!on_battery(&dir), "no supplies at all: mains");
        supply("BAT0", &[("type", "Battery"), ("present", "1")])?;
        assert!(on_battery(&dir), "a battery and no mains");
        supply("AC", &[("type", "Mains"), ("online", "0")])?;
        assert!(on_battery(&dir), "unplugged");
        supply("AC", &[("type", "Mains"), ("online", "1")])?;
        assert!(!on_battery(&dir), "plugged in");
        std::fs::remove_dir_all(&dir)
    }
}
