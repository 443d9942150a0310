//! A recipe is what a volunteer's machine will run, so its parser must refuse anything bad
//! without panicking, and what it accepts must keep the promises the runner relies on: every
//! step's timeout reads as a duration, no JUnit glob leaves the workdir, the repo is not an
//! option. The branch glob matcher gets arbitrary patterns too (it must stay linear).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tbox_protocol::{branch_matches, parse_duration, parse_recipe};

fuzz_target!(|data: &[u8]| {
    if let Ok(recipe) = parse_recipe(data) {
        assert!(!recipe.repo.starts_with('-'), "an option accepted as repo: {:?}", recipe.repo);
        assert!(!recipe.steps.is_empty() && !recipe.branches.is_empty());
        for step in &recipe.steps {
            if let Some(t) = &step.timeout {
                assert!(parse_duration(t).is_some(), "accepted timeout {t:?} does not parse");
            }
            for g in &step.junit {
                assert!(!g.starts_with('/') && !g.split('/').any(|p| p == ".."), "junit glob {g:?} escapes");
            }
        }
    }
    // The first line as a glob, the rest as a branch name.
    let text = String::from_utf8_lossy(data);
    let (pattern, branch) = text.split_once('\n').unwrap_or((&text, ""));
    let matched = branch_matches(pattern, branch);
    if pattern == branch && !pattern.contains(['*', '?']) {
        assert!(matched, "{pattern:?} does not match itself");
    }
    assert!(branch_matches("*", branch));
});
