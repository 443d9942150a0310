//! Properties detected on this machine, shown on the builder page.

use std::collections::BTreeMap;

/// os, arch, kernel, cpus and the reporter's version, then the configured ones on top.
pub fn detect(configured: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    p.insert("os".into(), os_name());
    p.insert("arch".into(), std::env::consts::ARCH.into());
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        p.insert("kernel".into(), k.trim().into());
    }
    if let Ok(n) = std::thread::available_parallelism() {
        p.insert("cpus".into(), n.to_string());
    }
    p.insert("reporter".into(), crate::REPORTER.into());
    p.extend(configured.iter().map(|(k, v)| (k.clone(), v.clone())));
    p
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').chars().filter(|c| !c.is_control()).take(200).collect())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}
