//! Where a report goes: verify the signature over the raw bytes, then parse and validate,
//! then write the whole build (steps, logs, tests) in one transaction.
//!
//! Everything here is blocking (RSA, SHA-256, JSON, zstd, diesel): callers run it on the
//! blocking thread pool, never on the async executor.

use chrono::{DateTime, Utc};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use sha2::{Digest, Sha256};
use tbox_protocol::{BuildResult, BuildState, ParseError, Report, hex, parse_report};

use crate::db::models::{BuildFields, Builder, NewLog, NewStep, NewTest};
use crate::db::{self, DbConn, builders, builds, projects};
use crate::error::AppError;

/// What a client sent: the two headers and the exact body bytes.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// `Tbox-Builder`.
    pub builder: Option<&'a str>,
    /// `Tbox-Signature`.
    pub signature: Option<&'a str>,
    /// The uncompressed body, as received.
    pub body: &'a [u8],
}

/// What became of an accepted report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The report's id: hex SHA-256 of its body.
    pub report_id: String,
    /// The build it was recorded as.
    pub build_id: i64,
    /// False when this exact body had been received before (nothing new recorded).
    pub created: bool,
    /// The build's result as reported (none while it runs).
    pub result: Option<String>,
}

/// Verifies, validates and stores one report, on this connection.
pub fn ingest(conn: &mut DbConn, sub: Submission<'_>, now: DateTime<Utc>) -> Result<Outcome, AppError> {
    match prepare(conn, sub, now)? {
        Checked::Duplicate(outcome) => Ok(outcome),
        Checked::New(report) => write(conn, &report),
    }
}

/// A report that passed every check and is ready to be written.
#[derive(Debug)]
pub struct Prepared {
    report: Report,
    id: String,
    builder_id: i64,
    project_id: i64,
    logs: Vec<Option<Compressed>>,
}

/// What [`prepare`] found.
#[derive(Debug)]
pub enum Checked {
    /// This exact body was stored before: nothing to write.
    Duplicate(Outcome),
    /// A report to write.
    New(Box<Prepared>),
}

/// Everything but the write: the signature, the parse, the permissions, and the CPU work
/// (compressing logs), so that the write lock is held only for writing.
pub fn prepare(conn: &mut DbConn, sub: Submission<'_>, now: DateTime<Utc>) -> Result<Checked, AppError> {
    // One SHA-256 of the body: it is the report's id, and what the signature signs.
    let digest: [u8; 32] = Sha256::digest(sub.body).into();
    let builder = authenticate(conn, sub, &digest)?;
    let id = hex(&digest);
    if let Some(build_id) = builds::by_report(conn, &id)? {
        return Ok(Checked::Duplicate(Outcome { report_id: id, build_id, created: false, result: None }));
    }

    let report = parse_report(sub.body, now).map_err(|e| match e {
        ParseError::Malformed(m) => AppError::bad_request("malformed", m),
        ParseError::Invalid(v) => AppError::invalid("invalid", v.to_string()),
    })?;
    if report.builder != builder.name {
        return Err(AppError::forbidden(
            "builder_mismatch",
            format!("the report says builder {:?} but was signed as {:?}", report.builder, builder.name),
        ));
    }
    let project = projects::by_name(conn, &report.project)?.ok_or_else(|| {
        AppError::invalid("unknown_project", format!("project: no project named {:?}", report.project))
    })?;
    if !builders::may_report(conn, builder.id, project.id)? {
        // Rare (a refusal), so the extra query costs nothing on the hot path.
        let asked = builders::requested_projects(conn, builder.id)?.contains(&project.name);
        return Err(AppError::forbidden(
            "not_allowed",
            if asked {
                format!(
                    "builder {:?} asked to report for project {:?}; that waits for approval by an administrator",
                    builder.name, project.name
                )
            } else {
                format!("builder {:?} may not report for project {:?}", builder.name, project.name)
            },
        ));
    }
    let logs = compress_logs(&report)?;
    Ok(Checked::New(Box::new(Prepared { report, id, builder_id: builder.id, project_id: project.id, logs })))
}

/// Writes a prepared report in a transaction of its own.
pub fn write(conn: &mut DbConn, p: &Prepared) -> Result<Outcome, AppError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match db::write_transaction(conn, |conn| store(conn, p)) {
            // Another server process stored the same report or build a moment ago (look again),
            // or PostgreSQL chose this transaction as a deadlock's victim (nothing was written):
            // run it again, a few times at most.
            Err(AppError::Internal(e)) if attempt < 4 && retryable(&e) => {
                log::info!("ingest: retrying after a transient database conflict: {e:#}");
                std::thread::sleep(std::time::Duration::from_millis(5 * attempt));
            }
            other => return other,
        }
    }
}

/// Finds the header's builder and checks the signature against its keys.
///
/// A revoked or pending status is told only to someone holding one of the builder's keys, so
/// the answers reveal nothing about builders to strangers.
/// The active builder that signed a submission (its headers and body).
pub fn authenticate(conn: &mut DbConn, sub: Submission<'_>, digest: &[u8; 32]) -> Result<Builder, AppError> {
    let name = sub
        .builder
        .filter(|n| !n.is_empty())
        .ok_or_else(|| AppError::unauthorized("unsigned", "missing Tbox-Builder header"))?;
    let signature = sub
        .signature
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AppError::unauthorized("unsigned", "missing Tbox-Signature header"))?;
    let unknown = || AppError::unauthorized("unknown_builder", format!("no builder named {name:?} is registered"));
    if tbox_protocol::validate_name("builder", name, 64).is_err() {
        return Err(unknown());
    }
    let builder = builders::by_name(conn, name)?.ok_or_else(unknown)?;
    let keys = builders::keys(conn, builder.id)?;
    let signed_with = keys.iter().find(|k| crate::signature::verifies(&k.public_key, digest, signature));
    let Some(key) = signed_with else {
        return Err(AppError::unauthorized(
            "bad_signature",
            format!("the signature does not verify with any key of builder {name:?}"),
        ));
    };
    if key.revoked_at.is_some() {
        return Err(AppError::forbidden("key_revoked", format!("key {} has been revoked", key.fingerprint)));
    }
    match builder.status.as_str() {
        builders::ACTIVE => Ok(builder),
        builders::PENDING => Err(AppError::forbidden(
            "builder_pending",
            format!("builder {name:?} is pending approval by an administrator"),
        )),
        _ => Err(AppError::forbidden("builder_revoked", format!("builder {name:?} has been revoked"))),
    }
}

/// Why a report that ran nothing useful (`exception`) answered its lease: the last exception
/// step's name and the first line of its log that is not the reporter's preamble, bounded.
fn declined_because(report: &Report) -> Option<String> {
    if report.result != Some(BuildResult::Exception) {
        return None;
    }
    let step = report.steps.iter().rev().find(|s| s.result == BuildResult::Exception)?;
    let line = step
        .log
        .as_deref()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("[tbox-report]") && !l.starts_with("$ "));
    let why = match line {
        Some(l) => format!("{}: {l}", step.name),
        None => step.name.clone(),
    };
    // From a log, which may hold anything: no NUL (PostgreSQL text refuses it) nor other
    // control characters in what pages show.
    Some(why.chars().filter(|c| !c.is_control()).take(300).collect())
}

/// A step's log, ready to store: (digest, uncompressed size, zstd bytes).
#[derive(Debug)]
struct Compressed {
    digest: String,
    size: i64,
    bytes: Vec<u8>,
}

/// zstd level 1 (on build logs 37% faster than level 3 for 3% more bytes), with one compression context per thread: making a context for every log
/// (allocating and zeroing its tables) cost more than compressing a small log.
fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some(c) => c,
            None => slot.insert(zstd::bulk::Compressor::new(1)?),
        };
        compressor.compress(data)
    })
}

fn compress_logs(report: &Report) -> Result<Vec<Option<Compressed>>, AppError> {
    report
        .steps
        .iter()
        .map(|s| {
            let Some(log) = &s.log else { return Ok(None) };
            let digest = format!("{:x}", Sha256::digest(log.as_bytes()));
            let bytes = compress(log.as_bytes()).map_err(|e| anyhow::anyhow!("zstd: {e}"))?;
            let size = i64::try_from(log.len()).map_err(|e| anyhow::anyhow!(e))?;
            Ok(Some(Compressed { digest, size, bytes }))
        })
        .collect()
}

/// The write itself; runs inside a transaction (or a savepoint of the SQLite writer's group
/// commit), all of it or nothing.
pub fn store(conn: &mut DbConn, p: &Prepared) -> Result<Outcome, AppError> {
    let (build_id, created) = store_build(conn, &p.report, &p.id, p.builder_id, p.project_id, &p.logs)?;
    let result = p.report.result.map(|r| r.as_str().to_owned());
    Ok(Outcome { report_id: p.id.clone(), build_id, created, result })
}

fn store_build(
    conn: &mut DbConn,
    report: &Report,
    digest: &str,
    builder_id: i64,
    project_id: i64,
    logs: &[Option<Compressed>],
) -> Result<(i64, bool), AppError> {
    let now = db::now();
    // Checked again inside the transaction: another request may have won the race.
    if let Some(build_id) = builds::by_report(conn, digest)? {
        return Ok((build_id, false));
    }
    let properties = serde_json::to_string(&report.properties).map_err(|e| anyhow::anyhow!(e))?;
    let artifacts = (!report.artifacts.is_empty())
        .then(|| serde_json::to_string(&report.artifacts))
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let fields = BuildFields {
        project_id,
        builder_id,
        uuid: &report.uuid,
        branch: &report.branch,
        revision: &report.revision,
        state: report.state.as_str(),
        result: report.result.map(BuildResult::as_str),
        started_at: db::to_db_time(report.started_at),
        finished_at: report.finished_at.map(db::to_db_time),
        reporter: &report.reporter,
        properties: &properties,
        received_at: now,
        recipe_version: report.recipe_version.and_then(|v| i64::try_from(v).ok()),
        recipe_key: report.recipe_key.as_deref(),
        sandbox: report.sandbox.as_deref(),
        artifacts: artifacts.as_deref(),
    };

    let build_id = match builds::by_uuid(conn, builder_id, &report.uuid)? {
        None => builds::insert(conn, &fields)?,
        Some(existing) if existing.project_id != project_id => {
            return Err(AppError::conflict(
                "build_conflict",
                format!("build {:?} of this builder belongs to another project", report.uuid),
            ));
        }
        Some(existing) => match (existing.state.as_str(), report.state) {
            ("started", BuildState::Finished) => {
                builds::complete(conn, existing.id, &fields)?;
                if existing.branch != report.branch {
                    // The build left its branch (a checkout that switched): that branch's head
                    // goes back to its previous build.
                    builds::recompute_head(conn, project_id, builder_id, &existing.branch)?;
                }
                existing.id
            }
            // A `started` report arriving after its `finished` one (e.g. flushed late from a
            // spool) adds nothing: remember it so it is a duplicate next time.
            ("finished", BuildState::Started) => {
                builds::record_report(conn, digest, existing.id, now)?;
                return Ok((existing.id, false));
            }
            (state, _) => {
                return Err(AppError::conflict(
                    "build_conflict",
                    format!(
                        "build {:?} of this builder is already {state} with a different report; \
                         only a finished report may complete a started build",
                        report.uuid
                    ),
                ));
            }
        },
    };

    // In digest order, once each: two reports carrying the same new logs in opposite orders
    // would otherwise each lock one and wait for the other (a deadlock on PostgreSQL).
    let mut log_rows: Vec<NewLog<'_>> =
        logs.iter().flatten().map(|l| NewLog { digest: &l.digest, size: l.size, compressed: &l.bytes }).collect();
    log_rows.sort_by_key(|l| l.digest);
    log_rows.dedup_by_key(|l| l.digest);
    builds::insert_logs(conn, &log_rows)?;
    let steps: Vec<NewStep<'_>> = report
        .steps
        .iter()
        .zip(logs)
        .enumerate()
        .map(|(i, (s, log))| NewStep {
            build_id,
            position: i32::try_from(i).unwrap_or(i32::MAX),
            name: &s.name,
            kind: s.kind.map(|k| k.as_str()),
            result: s.result.as_str(),
            started_at: db::to_db_time(s.started_at),
            finished_at: db::to_db_time(s.finished_at),
            exit_code: s.exit_code,
            log_digest: log.as_ref().map(|l| l.digest.as_str()),
            log_truncated: s.log_truncated,
        })
        .collect();
    builds::insert_steps(conn, &steps)?;
    // What each result means on this builder, decided now, once (`results::tests`).
    let judged: Vec<(&str, &str, &str)> = if report.state == BuildState::Finished {
        report.tests.iter().map(|t| (t.suite.as_str(), t.name.as_str(), t.result.as_str())).collect()
    } else {
        Vec::new()
    };
    let context = crate::results::tests::Context {
        build_id,
        project_id,
        builder_id,
        branch: &report.branch,
        revision: &report.revision,
        started_at: fields.started_at,
    };
    let meaning = crate::results::tests::judge(conn, &context, &judged)?;
    let tests: Vec<NewTest<'_>> = report
        .tests
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let m = meaning.get(i);
            NewTest {
                build_id,
                suite: &t.suite,
                name: &t.name,
                result: t.result.as_str(),
                duration_ms: t.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)),
                message: t.message.as_deref(),
                since_build_id: m.and_then(|m| m.since_build_id),
                flaky: m.is_some_and(|m| m.flaky),
                history: m.map(|m| m.history.0),
            }
        })
        .collect();
    builds::insert_tests(conn, &tests)?;
    if let Some(lease) = report.lease {
        let result = report.result.filter(|_| report.state == BuildState::Finished).map(BuildResult::as_str);
        let id = i64::try_from(lease).unwrap_or(i64::MAX);
        let asked = (project_id, report.branch.as_str(), report.revision.as_str());
        match crate::db::requests::report(
            conn,
            id,
            builder_id,
            asked,
            build_id,
            (result, declined_because(report).as_deref()),
            now,
        )? {
            Ok(events) => crate::notify::disputed(conn, &events, now)?,
            Err(crate::db::requests::LeaseError::Answered(what)) => {
                return Err(AppError::conflict(
                    "lease_answered",
                    format!("lease: {what}; an answer to a request is not changed once given"),
                ));
            }
            Err(crate::db::requests::LeaseError::Mismatch(what)) => {
                return Err(AppError::invalid(
                    "lease_mismatch",
                    format!(
                        "lease: {what}; this report is of branch {} at revision {}, so it cannot answer it",
                        report.branch, report.revision
                    ),
                ));
            }
            Err(_) => {
                return Err(AppError::invalid(
                    "unknown_lease",
                    format!("lease: {lease} is not a lease of this builder for project {:?}", report.project),
                ));
            }
        }
    }
    builds::record_report(conn, digest, build_id, now)?;
    builds::update_head(conn, &fields, build_id)?;
    builders::touch(conn, builder_id, &properties, now)?;
    // In the same transaction: a change of status is queued exactly when the report is stored.
    if report.state == BuildState::Finished {
        crate::notify::after_report(conn, project_id, build_id, now)?;
    }
    // A build started or finished: the revision's commit statuses, if the project has a forge.
    crate::notify::forge::sync(conn, project_id, &report.revision, now)?;
    Ok((build_id, true))
}

/// Whether a failed write transaction may succeed if run again: a unique violation from a
/// concurrent duplicate, a serialization failure, or a deadlock (PostgreSQL's SQLSTATE 40P01,
/// which diesel does not classify).
fn retryable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<DieselError>() {
        // A foreign key: a notification subscription removed while the report queued a
        // delivery to it.
        Some(DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ForeignKeyViolation,
            _,
        )) => true,
        Some(DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)) => {
            info.message().contains("deadlock detected")
        }
        _ => false,
    }
}
