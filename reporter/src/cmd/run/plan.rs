//! What a build runs, decided before anything runs: the volunteer's own steps, or the project's
//! recipe once it passed every check (`trust.rs`); the limits the steps get; and, for a leased
//! request, which revision, if a key the volunteer trusts asked for it.

use chrono::Utc;
use tbox_protocol::{BranchName, RecipeStep, RequestError, Revision, StepLimits, parse_request};

use crate::config::{Config, Project};
use crate::exit;
use crate::trust::{self, NoRecipe, Verified};

/// What a build of a project runs, and where its source comes from.
pub(super) struct Plan {
    pub steps: Vec<RecipeStep>,
    /// The URL to clone or fetch, if any.
    pub source: Option<String>,
    pub recipe: Option<Verified>,
    /// Whether the steps get the network.
    pub network: bool,
    /// What each step may use: the volunteer's limits, or less if the recipe asks.
    pub limits: StepLimits,
    /// Globs of the files whose digests the report carries.
    pub artifacts: Vec<String>,
}

/// A build a project asked for (a lease on one of its requests), rather than one of `run`'s
/// own: the request's branch and revision, and the lease its reports close.
#[derive(Debug, Clone)]
pub struct Job {
    pub branch: BranchName,
    pub revision: Option<Revision>,
    pub lease: u64,
    /// The build request the lease is for (recorded in `tbox-report log`).
    pub request: Option<u64>,
    /// The request as its project signed it, and the signature (none when an admin made it
    /// on the server). A revision is built only when a key this volunteer trusts asked for it.
    pub signed: Option<(String, String)>,
}

impl Job {
    /// The revision to build (none: the branch's head). The server alone may ask for a branch's
    /// head, which the recipe allows, but never choose a commit.
    ///
    /// Err, and nothing is built: a revision no trusted key asked for; or a request that a trusted
    /// key did sign but that is not to be obeyed now (for another project, older than 30 days,
    /// past its deadline, or not for this lease's branch and revision).
    pub(super) fn requested_revision(&self, plan: &Plan, project: &str) -> Result<Option<&Revision>, String> {
        let trusted = plan
            .recipe
            .as_ref()
            .zip(self.signed.as_ref())
            .filter(|(v, (body, sig))| v.signed_by_trusted(body.as_bytes(), sig));
        let Some((_, (body, _))) = trusted else {
            return match &self.revision {
                None => Ok(None),
                Some(rev) => Err(format!(
                    "the server asked for revision {rev}, but no key you trust signed a request for it (only the \
                     project chooses a commit; the server alone may ask for the head of {})",
                    self.branch
                )),
            };
        };
        let asked = parse_request(body.as_bytes()).map_err(|e| e.to_string())?;
        asked.check(project, Utc::now()).map_err(|e: RequestError| e.to_string())?;
        if asked.branch != self.branch {
            return Err(format!(
                "the lease names branch {}, but the request the project signed asks for {}",
                self.branch, asked.branch
            ));
        }
        if asked.revision != self.revision {
            return Err(format!(
                "the lease names revision {}, but the request the project signed asks for {}",
                self.revision.as_ref().map_or("(the head)".to_owned(), ToString::to_string),
                asked.revision.as_ref().map_or("(the head)".to_owned(), ToString::to_string)
            ));
        }
        Ok(self.revision.as_ref())
    }
}

/// Why a project is not built this time.
pub(super) enum Skip {
    /// Nothing to say to the project (no recipe yet, unmet requirements, server away): exit
    /// with this code, after printing the message.
    Quietly(u8, String),
    /// Refused: exit 5, and the project is told why.
    Refused(String),
}

/// The steps to run: the config's own, or the project's recipe once it passed every check.
pub(super) fn plan(config: &Config, project: &Project, verbose: bool) -> Result<Plan, Skip> {
    let mine = config.limits_for(project);
    let Some(pin) = &project.recipe else {
        let steps = project.steps.clone();
        let network = config.network_for(project);
        let artifacts = project.artifacts.clone();
        return Ok(Plan { steps, source: project.git.clone(), recipe: None, network, limits: mine, artifacts });
    };
    let name = &project.name;
    let v = match trust::obtain(&trust::agent(), config.server.trim_end_matches('/'), name, pin) {
        Ok(v) => v,
        Err(NoRecipe::Refused(why)) => return Err(Skip::Refused(why)),
        Err(NoRecipe::NonePublished(why)) => return Err(Skip::Quietly(exit::OK, format!("{why}; nothing to build"))),
        Err(NoRecipe::Unreachable(why)) => {
            return Err(Skip::Quietly(exit::SPOOLED, format!("{name}: {why}; nothing built")));
        }
    };
    if let Some(note) = &v.from_cache {
        eprintln!("tbox-report: {name}: {note} (version {}, signed by {})", v.recipe.version, v.key);
    }
    let r = &v.recipe;
    if !r.allows_branch(project.branch.as_str()) {
        return Err(Skip::Refused(format!(
            "the recipe (version {}) allows only the branches {}, and this machine is configured to build {:?}",
            r.version,
            r.branches.join(", "),
            project.branch
        )));
    }
    // The source is pinned too: the config's `git` (written by `join`), else the repository
    // this machine built from before. A recipe that switches it is refused.
    let (pinned, whence) = match (&project.git, trust::built_repo(name, pin)) {
        (Some(git), _) => (git.clone(), "the config's `git`"),
        (None, Some(built)) => (built, "the repository this machine built it from so far"),
        // Taking the first recipe's word for it would let a stolen project key point the
        // checkout, which runs outside the sandbox, at any repository this machine can read.
        (None, None) => {
            return Err(Skip::Quietly(
                exit::ERROR,
                format!(
                    "{name}: not built: no source repository is pinned for it (the config's [[project]] has no \
                     `git`, which `join` writes, and this machine has not built it before); the recipe (version \
                     {}) says {}: if that is the project's repository, add `git = {:?}` to its [[project]]",
                    r.version, r.repo, r.repo
                ),
            ));
        }
    };
    if pinned != r.repo {
        return Err(Skip::Refused(format!(
            "the recipe (version {}) takes its source from {}, but {whence} is {pinned}; if the project did move \
             its repository, set `git = {:?}` in this project's [[project]] of the config",
            r.version, r.repo, r.repo
        )));
    }
    let missing: Vec<&str> =
        r.requires.iter().filter(|c| !config.capabilities.contains(c)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(Skip::Quietly(
            exit::OK,
            format!(
                "{name}: skipped: recipe version {} requires {}, which this machine does not declare in \
                 `capabilities`",
                r.version,
                missing.join(", ")
            ),
        ));
    }
    if r.network && !config.network_for(project) {
        return Err(Skip::Quietly(
            exit::OK,
            format!(
                "{name}: skipped: recipe version {} needs the network; set `allow_network = true` to build it",
                r.version
            ),
        ));
    }
    if verbose {
        eprintln!("tbox-report: {name}: recipe version {} signed by {}", r.version, v.key);
    }
    let steps = r.steps.clone();
    let limits = mine.within(&r.limits);
    let artifacts = r.artifacts.clone();
    Ok(Plan { steps, source: Some(r.repo.clone()), network: r.network, limits, recipe: Some(v), artifacts })
}
