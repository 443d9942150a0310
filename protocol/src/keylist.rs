//! A project's key list (`tbox-keys/1`): which keys may sign its recipes and requests, and which
//! never may again, as one document the project signs.
//!
//! The server only mirrors it. A volunteer accepts a version only when a key it already trusts
//! signed it (the key it pinned, for the first; a key of the version it holds, after that), and
//! keeps the highest version it has seen: a mirror that serves an older list, or leaves a
//! revocation out, changes nothing. A key any version revoked is never trusted again.
//!
//! ```toml
//! format  = "tbox-keys/1"
//! project = "demo"
//! version = 2
//! expires = "2027-06-01T00:00:00Z"
//! keys    = ["""-----BEGIN PUBLIC KEY-----
//! …
//! -----END PUBLIC KEY-----"""]
//! revoked = ["SHA256:…"]
//! ```

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use thiserror::Error;

use crate::keys::{PublicKey, SignatureError};
use crate::recipe::{MAX_EXPIRY_DAYS, MAX_VERSION};
use crate::validate::{ValidationError, name};

/// The `format` of a key list.
pub const KEYS_FORMAT: &str = "tbox-keys/1";

/// Largest key list accepted, in bytes.
pub const MAX_KEY_LIST_BYTES: usize = 128 << 10;

/// Most keys in force at once.
const MAX_KEYS: usize = 20;
/// Most revoked fingerprints listed.
const MAX_REVOKED: usize = 1000;

/// A key list, parsed and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyList {
    /// The project it is for.
    pub project: String,
    /// Grows with every publication.
    pub version: u64,
    /// After this, volunteers refuse it.
    pub expires: DateTime<Utc>,
    /// The keys in force, with their fingerprints.
    pub keys: Vec<(String, PublicKey)>,
    /// Fingerprints of keys that may never sign again.
    pub revoked: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    format: String,
    project: String,
    version: u64,
    expires: DateTime<Utc>,
    keys: Vec<String>,
    #[serde(default)]
    revoked: Vec<String>,
}

/// Why a key list is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyListError {
    /// The signature is not valid base64.
    #[error("the key list's signature is not valid base64")]
    SignatureNotBase64,
    /// No trusted key signed these bytes.
    #[error("the key list is not signed by a key you trust")]
    NotSigned,
    /// Larger than [`MAX_KEY_LIST_BYTES`].
    #[error("the key list is {0} bytes; at most {MAX_KEY_LIST_BYTES} are accepted")]
    TooLarge(usize),
    /// Not UTF-8, or not TOML of the right shape.
    #[error("the key list is not a valid tbox-keys/1 TOML file: {0}")]
    Malformed(String),
    /// Well-formed, but breaks a rule (names the field).
    #[error("the key list is invalid: {0}")]
    Invalid(ValidationError),
    /// For another project.
    #[error("the key list is for project {found:?}, not {expected:?}")]
    WrongProject {
        /// The project asked for.
        expected: String,
        /// What the list says.
        found: String,
    },
    /// Past its `expires`.
    #[error("the project's key list (version {version}) expired at {expires}; the project must publish a new one")]
    Expired {
        /// Its version.
        version: u64,
        /// When it expired.
        expires: DateTime<Utc>,
    },
    /// Expires too far ahead.
    #[error("the key list expires at {0}, more than {MAX_EXPIRY_DAYS} days ahead")]
    TooLongLived(DateTime<Utc>),
    /// Older than one already seen.
    #[error(
        "the key list's version {found} is lower than version {held}, which this machine has seen (a mirror hiding \
         newer keys or revocations?)"
    )]
    Rollback {
        /// The version held here.
        held: u64,
        /// What was served.
        found: u64,
    },
    /// The same version as one seen, other bytes.
    #[error("the key list claims version {0}, which this machine has seen with different contents")]
    Changed(u64),
}

impl From<ValidationError> for KeyListError {
    fn from(e: ValidationError) -> Self {
        KeyListError::Invalid(e)
    }
}

/// Checks the signature over the exact bytes with each key in turn, then parses them. Returns
/// the list and the index of the key that signed it.
pub fn verify_key_list(
    bytes: &[u8],
    signature_b64: &str,
    keys: &[PublicKey],
) -> Result<(KeyList, usize), KeyListError> {
    if bytes.len() > MAX_KEY_LIST_BYTES {
        return Err(KeyListError::TooLarge(bytes.len()));
    }
    let mut signer = None;
    for (i, key) in keys.iter().enumerate() {
        match key.verify(bytes, signature_b64) {
            Ok(()) => {
                signer = Some(i);
                break;
            }
            Err(SignatureError::NotBase64) => return Err(KeyListError::SignatureNotBase64),
            Err(SignatureError::Mismatch) => {}
        }
    }
    let signer = signer.ok_or(KeyListError::NotSigned)?;
    Ok((parse_key_list(bytes)?, signer))
}

/// Parses and validates key list bytes without looking at a signature (for `keys sign`, and
/// for the server once it has checked the signature).
pub fn parse_key_list(bytes: &[u8]) -> Result<KeyList, KeyListError> {
    if bytes.len() > MAX_KEY_LIST_BYTES {
        return Err(KeyListError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| KeyListError::Malformed(format!("not UTF-8: {e}")))?;
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let line = e.span().and_then(|s| text.get(..s.start)).map(|t| t.matches('\n').count() + 1);
        KeyListError::Malformed(match line {
            Some(n) => format!("line {n}: {}", e.message().trim()),
            None => e.message().trim().to_owned(),
        })
    })?;
    let bad = |field: &str, why: String| KeyListError::Invalid(ValidationError::new(field, why));
    if raw.format != KEYS_FORMAT {
        return Err(bad("format", format!("must be \"{KEYS_FORMAT}\", got {:?}", raw.format)));
    }
    name("project", &raw.project, 64)?;
    if !(1..=MAX_VERSION).contains(&raw.version) {
        return Err(bad("version", format!("must be 1 to {MAX_VERSION}")));
    }
    if raw.keys.is_empty() || raw.keys.len() > MAX_KEYS {
        return Err(bad("keys", format!("list 1 to {MAX_KEYS} public keys")));
    }
    let mut keys: Vec<(String, PublicKey)> = Vec::new();
    for (i, pem) in raw.keys.iter().enumerate() {
        let key = PublicKey::from_pem(pem).map_err(|e| bad(&format!("keys[{i}]"), e.to_string()))?;
        let fp = key.fingerprint();
        if keys.iter().any(|(f, _)| *f == fp) {
            return Err(bad(&format!("keys[{i}]"), format!("{fp} is listed twice")));
        }
        keys.push((fp, key));
    }
    if raw.revoked.len() > MAX_REVOKED {
        return Err(bad("revoked", format!("at most {MAX_REVOKED} fingerprints")));
    }
    for (i, fp) in raw.revoked.iter().enumerate() {
        if !is_fingerprint(fp) {
            return Err(bad(&format!("revoked[{i}]"), "must be a key fingerprint, SHA256: and 64 hex digits".into()));
        }
        if keys.iter().any(|(f, _)| f == fp) {
            return Err(bad(&format!("revoked[{i}]"), format!("{fp} is in `keys` too")));
        }
    }
    Ok(KeyList { project: raw.project, version: raw.version, expires: raw.expires, keys, revoked: raw.revoked })
}

/// `SHA256:` and 64 lower-case hex digits.
pub fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

impl KeyList {
    /// What a reader holds a signed list to at `now`: its project, not expired, not living
    /// more than [`MAX_EXPIRY_DAYS`], and not older than the one it holds (`held`: that
    /// version and the SHA-256 of its bytes; `digest` is this one's).
    pub fn check(
        &self,
        project: &str,
        now: DateTime<Utc>,
        digest: &str,
        held: Option<(u64, &str)>,
    ) -> Result<(), KeyListError> {
        if self.project != project {
            return Err(KeyListError::WrongProject { expected: project.to_owned(), found: self.project.clone() });
        }
        match held {
            Some((v, _)) if self.version < v => return Err(KeyListError::Rollback { held: v, found: self.version }),
            Some((v, seen)) if self.version == v && seen != digest => return Err(KeyListError::Changed(v)),
            _ => {}
        }
        if now >= self.expires {
            return Err(KeyListError::Expired { version: self.version, expires: self.expires });
        }
        if self.expires > now + TimeDelta::days(MAX_EXPIRY_DAYS) {
            return Err(KeyListError::TooLongLived(self.expires));
        }
        Ok(())
    }

    /// Whether `fingerprint` is a key in force.
    pub fn lists(&self, fingerprint: &str) -> bool {
        self.keys.iter().any(|(f, _)| f == fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn key() -> PrivateKey {
        PrivateKey::generate(&mut rand_core::OsRng, 2048).unwrap_or_else(|e| panic!("{e}"))
    }

    fn text(version: u64, keys: &[&PrivateKey], revoked: &[String]) -> String {
        let pems: Vec<String> = keys.iter().map(|k| format!("\"\"\"{}\"\"\"", k.public_key().to_pem())).collect();
        let revoked: Vec<String> = revoked.iter().map(|r| format!("{r:?}")).collect();
        format!(
            "format = \"tbox-keys/1\"\nproject = \"demo\"\nversion = {version}\nexpires = \"2027-06-01T00:00:00Z\"\n\
             keys = [{}]\nrevoked = [{}]\n",
            pems.join(", "),
            revoked.join(", ")
        )
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").map(|t| t.to_utc()).unwrap_or_default()
    }

    #[test]
    fn verified_then_checked() -> Result<(), KeyListError> {
        let (a, b, stranger) = (key(), key(), key());
        let t = text(2, &[&a, &b], &[stranger.public_key().fingerprint()]);
        let (list, signer) = verify_key_list(t.as_bytes(), &a.sign(t.as_bytes()), &[b.public_key(), a.public_key()])?;
        assert_eq!((list.version, signer, list.keys.len()), (2, 1, 2));
        assert!(list.lists(&b.public_key().fingerprint()) && !list.lists(&stranger.public_key().fingerprint()));
        assert_eq!(
            verify_key_list(t.as_bytes(), &stranger.sign(t.as_bytes()), &[a.public_key()]),
            Err(KeyListError::NotSigned)
        );
        list.check("demo", now(), "d2", None)?;
        list.check("demo", now(), "d2", Some((1, "d1")))?;
        list.check("demo", now(), "d2", Some((2, "d2")))?;
        assert_eq!(list.check("demo", now(), "d2", Some((3, "d3"))), Err(KeyListError::Rollback { held: 3, found: 2 }));
        assert_eq!(list.check("demo", now(), "dx", Some((2, "d2"))), Err(KeyListError::Changed(2)));
        assert!(matches!(list.check("other", now(), "d2", None), Err(KeyListError::WrongProject { .. })));
        let later = DateTime::parse_from_rfc3339("2027-07-01T00:00:00Z").map(|t| t.to_utc()).unwrap_or_default();
        assert!(matches!(list.check("demo", later, "d2", None), Err(KeyListError::Expired { .. })));
        let early = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").map(|t| t.to_utc()).unwrap_or_default();
        assert!(matches!(list.check("demo", early, "d2", None), Err(KeyListError::TooLongLived(_))));
        Ok(())
    }

    #[test]
    fn errors_name_the_field() {
        let a = key();
        let fp = a.public_key().fingerprint();
        let field = |t: String| match parse_key_list(t.as_bytes()) {
            Err(KeyListError::Invalid(e)) => e.field,
            other => format!("not a validation error: {other:?}"),
        };
        assert_eq!(field(text(1, &[&a], std::slice::from_ref(&fp))), "revoked[0]");
        assert_eq!(field(text(1, &[&a, &a], &[])), "keys[1]");
        assert_eq!(field(text(1, &[], &[])), "keys");
        assert_eq!(field(text(0, &[&a], &[])), "version");
        assert_eq!(field(text(1 << 60, &[&a], &[])), "version");
        assert_eq!(field(text(1, &[&a], &["SHA256:nothex".into()])), "revoked[0]");
        assert_eq!(field(text(1, &[&a], &[]).replace("tbox-keys/1", "tbox-keys/2")), "format");
        assert!(matches!(
            parse_key_list(format!("{}surprise = 1\n", text(1, &[&a], &[])).as_bytes()),
            Err(KeyListError::Malformed(_))
        ));
    }
}
