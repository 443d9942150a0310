//! Branch names and revisions that came from outside, checked once.
//!
//! A branch name or a commit id from a server, a lease or a request ends up in a `git` argument
//! list. A value such as `--upload-pack=sh -c …` there runs a program, so these newtypes can only
//! be built by validation: code that holds a [`BranchName`] or a [`Revision`] cannot hold an
//! option, whatever route the value took.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validate::ValidationError;

/// The longest branch name accepted.
pub const MAX_BRANCH_BYTES: usize = 200;

/// A branch name that `git check-ref-format --branch` accepts, in printable ASCII, not starting
/// with `-` (so never an option), at most [`MAX_BRANCH_BYTES`] long.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BranchName(String);

impl BranchName {
    /// Checks `name`; the error says what is wrong (the field is `branch`).
    pub fn parse(name: &str) -> Result<BranchName, ValidationError> {
        check_ref(name, false).map_err(|why| ValidationError::new("branch", why))?;
        Ok(BranchName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `main`, the usual default.
    pub fn main() -> BranchName {
        BranchName("main".to_owned())
    }
}

/// Checks a branch pattern as a recipe's `branches` holds them: a branch name in which `*` and
/// `?` may stand for characters.
pub fn check_branch_pattern(pattern: &str) -> Result<(), String> {
    check_ref(pattern, true)
}

/// The rules of `git check-ref-format --branch` (see git-check-ref-format(1)), narrowed to
/// printable ASCII. `glob`: `*` and `?` are allowed (branch patterns).
fn check_ref(name: &str, glob: bool) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_BRANCH_BYTES {
        return Err(format!("must be 1 to {MAX_BRANCH_BYTES} bytes long"));
    }
    if name.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if let Some(c) = name.chars().find(|c| {
        !c.is_ascii_graphic() || matches!(c, '~' | '^' | ':' | '\\' | '[') || (!glob && matches!(c, '*' | '?'))
    }) {
        return Err(format!("{c:?} is not allowed in a branch name (git check-ref-format)"));
    }
    if name == "@" || name == "HEAD" || name.contains("@{") || name.contains("..") {
        return Err("must not be \"@\" or \"HEAD\", or hold \"@{\" or \"..\" (git check-ref-format)".into());
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") || name.ends_with('.') {
        return Err("must not begin or end with '/', hold \"//\" or end with '.' (git check-ref-format)".into());
    }
    if name.split('/').any(|part| part.starts_with('.') || part.ends_with(".lock")) {
        return Err("no part may begin with '.' or end with \".lock\" (git check-ref-format)".into());
    }
    Ok(())
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for BranchName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for BranchName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BranchName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BranchName::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) hexadecimal digits, kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(String);

impl Revision {
    /// Checks `id`; the error says what is wrong (the field is `revision`).
    pub fn parse(id: &str) -> Result<Revision, ValidationError> {
        if (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Revision(id.to_ascii_lowercase()))
        } else {
            Err(ValidationError::new("revision", "must be a full commit id: 40 or 64 hexadecimal digits"))
        }
    }

    /// The commit id, in lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Revision {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Revision {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Revision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Revision::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_follow_git_check_ref_format() {
        for good in ["main", "release-1.2", "feature/x", "v1.0+build", "a.b_c-d", "user@host", "fix#12"] {
            assert!(BranchName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "--upload-pack=touch /tmp/x",
            "-b",
            "a b",
            "a\tb",
            "a\nb",
            "../../etc",
            "a..b",
            "/main",
            "main/",
            "a//b",
            "main.",
            ".hidden",
            "a/.b",
            "x.lock",
            "a/x.lock/b",
            "@",
            "HEAD",
            "a@{1}",
            "a~1",
            "a^",
            "a:b",
            "a\\b",
            "a[b",
            "a*",
            "a?",
            "\u{1b}[2J",
            "zé",
        ] {
            assert!(BranchName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(BranchName::parse(&"a".repeat(201)).is_err());
        assert!(check_branch_pattern("release-*").is_ok() && check_branch_pattern("v?.x").is_ok());
        assert!(check_branch_pattern("-*").is_err() && check_branch_pattern("*/../*").is_err());
    }

    #[test]
    fn revisions_are_full_commit_ids() {
        let sha1 = "9fceb02d0ae598e95dc970b74767f19372d61af8";
        assert_eq!(Revision::parse(sha1).map(|r| r.to_string()), Ok(sha1.to_owned()));
        assert_eq!(Revision::parse(&sha1.to_uppercase()).map(|r| r.to_string()), Ok(sha1.to_owned()));
        assert!(Revision::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "HEAD", "main", "9fceb02", "--output=/tmp/x", &"g".repeat(40), &"a".repeat(41)] {
            assert!(Revision::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn serde_goes_through_the_checks() {
        assert!(serde_json::from_str::<BranchName>("\"--upload-pack=x\"").is_err());
        assert!(serde_json::from_str::<Revision>("\"HEAD\"").is_err());
        assert_eq!(serde_json::from_str::<BranchName>("\"main\"").map(|b| b.to_string()).ok(), Some("main".into()));
    }
}
