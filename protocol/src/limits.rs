//! What one build step may use of a volunteer's machine: tasks, memory and disk.
//!
//! The volunteer sets them (`[limits]` in the reporter's config, defaults on); a recipe may ask
//! for less, never more: [`ResourceLimits::within`] takes the smaller of each.

use std::fmt;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::validate::ValidationError;

/// `[limits]`: each field optional; absent means "the default" in a config and "no wish" in a
/// recipe. Sizes are written like `"4GiB"` or `"512MiB"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// Tasks (processes and threads) in the step's process tree.
    #[serde(default)]
    pub processes: Option<u32>,
    /// Resident memory of the whole tree.
    #[serde(default, deserialize_with = "size")]
    pub memory: Option<ByteSize>,
    /// The workdir, the step's HOME and its /tmp, together.
    #[serde(default, deserialize_with = "size")]
    pub disk: Option<ByteSize>,
}

/// A size written as people write it (`"4GiB"`, `"512MiB"`, `"10 GB"`), with an error that
/// says so.
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<ByteSize>()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a size such as \"4GiB\" or \"512MiB\"")))
}

/// The limits in force for a step, every field decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tasks in the step's process tree.
    pub processes: u32,
    /// Resident memory of the tree, in bytes.
    pub memory: u64,
    /// Workdir, HOME and /tmp, in bytes.
    pub disk: u64,
}

/// The defaults of DESIGN.md: 512 tasks, 4 GiB, 10 GiB.
pub const DEFAULT_LIMITS: Limits = Limits { processes: 512, memory: 4 << 30, disk: 10 << 30 };

/// Smallest memory or disk limit accepted: below it nothing real builds, and a typo such as
/// `memory = "4"` (four bytes) is caught.
const MIN_BYTES: u64 = 16 << 20;

impl ResourceLimits {
    /// Checks the values (`field` prefixes the error, e.g. `limits`).
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if let Some(p) = self.processes
            && !(8..=1_000_000).contains(&p)
        {
            return Err(ValidationError::new(format!("{field}.processes"), "must be 8 to 1000000"));
        }
        for (name, v) in [("memory", self.memory), ("disk", self.disk)] {
            if let Some(v) = v
                && v.as_u64() < MIN_BYTES
            {
                return Err(ValidationError::new(format!("{field}.{name}"), "must be at least 16MiB"));
            }
        }
        Ok(())
    }

    /// These limits filled in from `base` where absent.
    pub fn or(&self, base: Limits) -> Limits {
        Limits {
            processes: self.processes.unwrap_or(base.processes),
            memory: self.memory.map_or(base.memory, |m| m.as_u64()),
            disk: self.disk.map_or(base.disk, |d| d.as_u64()),
        }
    }
}

impl Limits {
    /// The smaller of each limit: what a recipe asks (`wish`) within what the volunteer allows.
    pub fn within(self, wish: &ResourceLimits) -> Limits {
        Limits {
            processes: wish.processes.map_or(self.processes, |p| p.min(self.processes)),
            memory: wish.memory.map_or(self.memory, |m| m.as_u64().min(self.memory)),
            disk: wish.disk.map_or(self.disk, |d| d.as_u64().min(self.disk)),
        }
    }
}

/// A size for people: `4 GiB`, `512 MiB`, or `1.5 GiB` when it is not a whole number.
pub fn human_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    if bytes < 1 << 10 {
        return format!("{bytes} bytes");
    }
    ByteSize::b(bytes).display().iec().to_string()
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} processes, {} of memory, {} of disk",
            self.processes,
            human_size(self.memory),
            human_size(self.disk)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_may_ask_for_less_never_more() -> Result<(), toml::de::Error> {
        let wish: ResourceLimits = toml::from_str("processes = 64\nmemory = \"8GiB\"\ndisk = \"1GiB\"")?;
        let mine = ResourceLimits { memory: Some(ByteSize::gib(2)), ..Default::default() }.or(DEFAULT_LIMITS);
        assert_eq!(mine.within(&wish), Limits { processes: 64, memory: 2 << 30, disk: 1 << 30 });
        assert_eq!(DEFAULT_LIMITS.within(&ResourceLimits::default()), DEFAULT_LIMITS);
        Ok(())
    }

    #[test]
    fn values_are_checked() -> Result<(), toml::de::Error> {
        let tiny: ResourceLimits = toml::from_str("memory = \"4\"")?;
        assert_eq!(tiny.validate("limits").map_err(|e| e.field), Err("limits.memory".to_owned()));
        let few: ResourceLimits = toml::from_str("processes = 1")?;
        assert_eq!(few.validate("limits").map_err(|e| e.field), Err("limits.processes".to_owned()));
        assert!(toml::from_str::<ResourceLimits>("cpus = 4").is_err());
        let lots =
            toml::from_str::<ResourceLimits>("memory = \"lots\"").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(lots.contains("is not a size such as \"4GiB\""), "{lots}");
        Ok(())
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(4 << 30), "4 GiB");
        assert_eq!(human_size(512 << 20), "512 MiB");
        assert_eq!(human_size(3 << 29), "1536 MiB");
        assert_eq!(human_size(1000), "1000 bytes");
        assert_eq!(DEFAULT_LIMITS.to_string(), "512 processes, 4 GiB of memory, 10 GiB of disk");
    }
}
