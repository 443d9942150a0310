//! Which keys may sign for a project (its recipes, build requests and key lists), and the
//! publication of a key list (`tbox-keys/1`).
//!
//! Before a project publishes a key list, the keys an admin added (`project key add`) sign for
//! it. Once it has one, the newest list decides: its keys sign, nothing else does. An admin's
//! `project key revoke` still stops a key here at once, list or not. Volunteers never take our
//! word for any of this: they check every list against the key they pinned.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tbox_protocol::{KeyList, KeyListError, MAX_EXPIRY_DAYS, PublicKey, parse_key_list, report_id};

use crate::db::models::{KeyListRow, NewProjectKey};
use crate::db::{self, DbConn, recipes, to_db_time};
use crate::error::AppError;

/// The keys that may sign for a project now: `(fingerprint, key)`.
pub fn signers(conn: &mut DbConn, project_id: i64) -> Result<Vec<(String, PublicKey)>, AppError> {
    let table = recipes::keys(conn, project_id)?;
    let revoked_here = |fp: &str| table.iter().any(|k| k.fingerprint == fp && k.revoked_at.is_some());
    let keys = match recipes::current_key_list(conn, project_id)? {
        Some(row) => {
            parse_key_list(&row.body)
                .map_err(|e| anyhow::anyhow!("stored key list version {} does not parse: {e}", row.version))?
                .keys
        }
        None => table
            .iter()
            .filter(|k| k.revoked_at.is_none())
            .filter_map(|k| PublicKey::from_pem(&k.public_key).ok().map(|key| (k.fingerprint.clone(), key)))
            .collect(),
    };
    Ok(keys.into_iter().filter(|(fp, _)| !revoked_here(fp)).collect())
}

/// The fingerprint of the key that may sign for the project now and made `signature` over
/// `body`: 401 when none, saying so when the signature is by a key the project revoked or no
/// longer lists (a maintainer signing with the old key after a rotation).
pub fn check_signature(
    conn: &mut DbConn,
    project_id: i64,
    project: &str,
    body: &[u8],
    signature: &str,
) -> Result<String, AppError> {
    match signed_by(&signers(conn, project_id)?, body, signature, project) {
        Err(AppError::Client { code: "bad_signature", status, retry_after, .. }) => {
            let mut known: Vec<(String, PublicKey, bool)> = recipes::keys(conn, project_id)?
                .into_iter()
                .filter_map(|k| {
                    PublicKey::from_pem(&k.public_key).ok().map(|key| (k.fingerprint, key, k.revoked_at.is_some()))
                })
                .collect();
            let lists = recipes::key_lists(conn, project_id)?;
            let revoked_in_lists: Vec<String> =
                lists.iter().filter_map(|r| parse_key_list(&r.body).ok()).flat_map(|l| l.revoked).collect();
            for (fp, _, revoked) in &mut known {
                *revoked |= revoked_in_lists.contains(fp);
            }
            let by = known.iter().find(|(_, key, _)| key.verify(body, signature).is_ok());
            let message = match by {
                Some((fp, _, true)) => format!("the signature is by {fp}, which project {project:?} has revoked"),
                Some((fp, _, false)) => {
                    format!("the signature is by {fp}, which project {project:?}'s key list no longer puts in force")
                }
                None => format!("the signature does not verify with any key that may sign for project {project:?}"),
            };
            Err(AppError::Client { status, code: "bad_signature", message, retry_after })
        }
        other => other,
    }
}

/// The fingerprint of the key among `signers` that made `signature` over `body`: 401 when none.
pub fn signed_by(
    signers: &[(String, PublicKey)],
    body: &[u8],
    signature: &str,
    project: &str,
) -> Result<String, AppError> {
    if signers.is_empty() {
        return Err(AppError::unauthorized(
            "no_project_key",
            format!(
                "project {project:?} has no signing key; an admin adds one with `tbox-server project key add \
                 {project} --key project.pub`"
            ),
        ));
    }
    for (fp, key) in signers {
        match key.verify(body, signature) {
            Ok(()) => return Ok(fp.clone()),
            Err(tbox_protocol::SignatureError::NotBase64) => {
                return Err(AppError::unauthorized("bad_signature", "Tbox-Signature is not valid base64"));
            }
            Err(tbox_protocol::SignatureError::Mismatch) => {}
        }
    }
    Err(AppError::unauthorized(
        "bad_signature",
        format!("the signature does not verify with any key that may sign for project {project:?}"),
    ))
}

/// A key list published: its version, digest and signer.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub digest: String,
    pub key: String,
}

/// Checks and stores a key list sent for `project`: signed by a key that may sign for the
/// project now, valid, for this project, unexpired and expiring within [`MAX_EXPIRY_DAYS`],
/// above the current version, and listing no key that an earlier list (or an admin) revoked.
pub fn publish(
    conn: &mut DbConn,
    project_id: i64,
    project: &str,
    body: &[u8],
    signature: &str,
    now: DateTime<Utc>,
) -> Result<Published, AppError> {
    let signer = check_signature(conn, project_id, project, body, signature)?;
    let list = parse_key_list(body).map_err(|e| match e {
        KeyListError::TooLarge(_) => AppError::too_large(e.to_string()),
        other => AppError::invalid("invalid_key_list", other.to_string()),
    })?;
    let invalid = |m: String| AppError::invalid("invalid_key_list", m);
    if list.project != project {
        return Err(invalid(format!("project: the key list is for project {:?}, not {project:?}", list.project)));
    }
    if list.expires <= now {
        return Err(invalid(format!("expires: {} is already past", list.expires.to_rfc3339())));
    }
    if list.expires > now + TimeDelta::days(MAX_EXPIRY_DAYS) {
        return Err(invalid(format!(
            "expires: {} is more than {MAX_EXPIRY_DAYS} days ahead; volunteers would refuse it",
            list.expires.to_rfc3339()
        )));
    }
    let version = i64::try_from(list.version).map_err(|_| invalid("version: too large".into()))?;
    let digest = report_id(body);
    let row = KeyListRow {
        id: 0,
        project_id,
        version,
        body: body.to_vec(),
        signature: signature.to_owned(),
        digest: digest.clone(),
        key_fingerprint: signer.clone(),
        expires_at: to_db_time(list.expires),
        published_at: db::now(),
    };
    let outcome = db::write_transaction(conn, |c| -> Result<(), AppError> {
        let earlier = recipes::key_lists(c, project_id)?;
        if let Some(cur) = earlier.last()
            && cur.version >= version
        {
            return Err(not_above("key list", version, cur.version));
        }
        let revoked = revoked_before(c, project_id, &earlier)?;
        for (i, (fp, _)) in list.keys.iter().enumerate() {
            if let Some(when) = revoked.iter().find(|(r, _)| r == fp).map(|(_, w)| w) {
                return Err(invalid(format!("keys[{i}]: {fp} was revoked ({when}); a revoked key never comes back")));
            }
        }
        recipes::publish_key_list(c, &row)?;
        sync_table(c, project_id, &list)?;
        Ok(())
    });
    match outcome {
        // Another publication of the same version won the race.
        Err(AppError::Internal(e))
            if matches!(
                e.downcast_ref::<DieselError>(),
                Some(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _))
            ) =>
        {
            Err(not_above("key list", version, version))
        }
        other => other,
    }?;
    Ok(Published { version: list.version, digest, key: signer })
}

/// Every key revoked so far, by a key list or by an admin, with where.
fn revoked_before(conn: &mut DbConn, project_id: i64, lists: &[KeyListRow]) -> Result<Vec<(String, String)>, AppError> {
    let mut revoked: Vec<(String, String)> = recipes::keys(conn, project_id)?
        .into_iter()
        .filter(|k| k.revoked_at.is_some())
        .map(|k| (k.fingerprint, "by an admin of this server".to_owned()))
        .collect();
    for row in lists {
        if let Ok(l) = parse_key_list(&row.body) {
            revoked.extend(l.revoked.into_iter().map(|fp| (fp, format!("in key list version {}", row.version))));
        }
    }
    Ok(revoked)
}

/// Keeps `project key list` truthful: the list's keys are known here, its revoked ones revoked.
fn sync_table(conn: &mut DbConn, project_id: i64, list: &KeyList) -> Result<(), AppError> {
    let known = recipes::keys(conn, project_id)?;
    for (fp, key) in &list.keys {
        if !known.iter().any(|k| &k.fingerprint == fp) {
            let pem = key.to_pem();
            let new = NewProjectKey { project_id, fingerprint: fp, public_key: &pem, created_at: db::now() };
            recipes::add_key(conn, &new)?;
        }
    }
    for fp in &list.revoked {
        recipes::revoke_key(conn, project_id, fp, db::now())?;
    }
    Ok(())
}

/// 409 for a version that is not above the current one, suggesting the next (without
/// overflowing: versions are bounded by `MAX_VERSION`, far below `i64::MAX`).
pub fn not_above(what: &str, version: i64, current: i64) -> AppError {
    AppError::conflict(
        "version_not_above",
        format!(
            "{what} version {version} is not above the current version {current}; publish version {}",
            current.saturating_add(1)
        ),
    )
}

/// Adds a project key; one the project already has (even revoked) is a 409.
pub fn add_key(conn: &mut DbConn, new: &NewProjectKey<'_>) -> Result<(), AppError> {
    db::write_transaction(conn, |c| recipes::add_key(c, new)).map_err(|e| match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => AppError::conflict(
            "key_exists",
            format!("the project already has key {} (a revoked key cannot come back)", new.fingerprint),
        ),
        other => other.into(),
    })
}
