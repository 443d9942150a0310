//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes (when several apply, 1 wins; `run` then exits with the highest):
  0  done (the report reached the server, whatever the build's result)
  1  error here (config, key, workdir, …); nothing was sent. Also: a checkout that failed
     (the message says why; the project is told once per reason), a report that could be
     neither sent nor spooled (a full disk: the message names the build, which is lost), and a
     damaged spooled report, never sent, set aside in the spool's corrupt/ with a .reason file
  2  wrong command line
  3  the server could not be reached, or something else answered in its place (a captive
     portal's page, not a tbox server's answer): the report is spooled, `flush` (or the next
     run) sends it
  4  the server refused the report (4xx); the reason is printed
  5  refused: a recipe (not signed by the pinned key, expired, a rollback, another project's,
     a branch or repo it does not allow) or the sandbox (none could be made); nothing ran and
     the message says why (`run` also tells the project, with an `exception` report)";

/// Exit codes of `join`.
const JOIN_EXIT_CODES: &str = "\
Exit codes:
  0  joined: the project is in the config and this machine is registered on its server
  1  error here (config, key file, a project of that name already in the config); nothing was
     changed
  2  wrong command line: not a project page URL, not a fingerprint, or no key confirmed
  3  the server could not be reached: nothing was changed; or it was reached for the recipe
     but not for registering: the project is in the config, `tbox-report register` later
  4  the server refused to register this machine (a name taken: choose one with --builder);
     the project was not added
  5  refused: the project's keys or recipe do not check out against the fingerprint given;
     nothing was changed";

/// Exit codes of `keygen`.
const KEYGEN_EXIT_CODES: &str = "\
Exit codes:
  0  the key was written (mode 600), and its public half beside it
  1  error here: the file exists already (never overwritten), or cannot be written
  2  wrong command line";

/// Exit codes of `status` and `log`.
const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0  shown (a server that cannot be reached is said in the output)
  1  error here (the config or the key cannot be read)
  2  wrong command line";

/// Exit codes of the maintainers' commands (recipe, keys, request).
const MAINTAINER_EXIT_CODES: &str = "\
Exit codes:
  0  done (signed, checked, or accepted by the server)
  1  error here (a file, a key, an invalid recipe or key list); nothing was sent
  2  wrong command line (or a key list publication that needs --yes): nothing was sent
  3  the server could not be reached, or answered something else than a tbox server
  4  the server refused it (4xx); the reason is printed
  5  `recipe verify`: the recipe is refused (its signature, project or expiry)";

/// Build a project on this machine and report the result, signed, to a tbox server.
#[derive(Debug, Parser)]
#[command(name = "tbox-report", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Config file [default: ~/.config/tbox/report.toml].
    #[arg(long, env = "TBOX_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Say more about what happens.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a new RSA key pair for this builder (or for a project).
    #[command(after_help = KEYGEN_EXIT_CODES)]
    Keygen(KeygenArgs),
    /// Ask the server to register this builder (an admin then approves it).
    #[command(after_help = EXIT_CODES)]
    Register(RegisterArgs),
    /// Build the configured projects whose revision changed, and report (the cron entry point).
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Report a build that ran elsewhere: one step per log file.
    #[command(after_help = EXIT_CODES)]
    Push(PushArgs),
    /// Send the reports waiting in the spool.
    #[command(after_help = EXIT_CODES)]
    Flush(FlushArgs),
    /// Check the config, the key and the server, and show what `run` would build.
    #[command(after_help = EXIT_CODES)]
    Check(CheckArgs),
    /// Join a project: pin its key, create the config and key if needed, register this machine.
    #[command(after_help = JOIN_EXIT_CODES)]
    Join(JoinArgs),
    /// Stop building a project: remove it from the config and forget its recipe.
    #[command(after_help = EXIT_CODES)]
    Leave(LeaveArgs),
    /// For maintainers: sign, check and publish a project's recipe.
    #[command(subcommand)]
    Recipe(RecipeCommand),
    /// For maintainers: sign and publish the project's key list (which keys sign, which are
    /// revoked): rotating or revoking a key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// For maintainers: ask volunteers' machines for builds (signed with the project's key).
    #[command(after_help = MAINTAINER_EXIT_CODES)]
    Request(RequestArgs),
    /// Stay running: take leases on the projects' build requests and build them, and do the
    /// periodic builds of `run` (for systemd: the package's user unit `tbox-report-serve`).
    #[command(after_help = EXIT_CODES)]
    Serve(ServeArgs),
    /// Start no new build until a time or until `resume` (for every config of this user).
    #[command(after_help = EXIT_CODES)]
    Pause(PauseArgs),
    /// End a pause.
    #[command(after_help = EXIT_CODES)]
    Resume(ResumeArgs),
    /// What this machine does: its projects and servers, approval, last builds, next work,
    /// limits, schedule, pause.
    #[command(after_help = STATUS_EXIT_CODES)]
    Status(StatusArgs),
    /// What this machine built: project, request, when, how long, result, link (kept here).
    #[command(after_help = STATUS_EXIT_CODES)]
    Log(LogArgs),
    /// Print the completion script of tbox-report for a shell (bash, zsh, fish, elvish, powershell),
    /// e.g. `tbox-report completions bash > /etc/bash_completion.d/tbox-report`.
    Completions(CompletionsArgs),
    /// Print tbox-report's manual page (roff), e.g. `tbox-report manpage | man -l -`; with `--dir`,
    /// write it and one page per subcommand (`tbox-report-serve.1`, …) there.
    Manpage(ManpageArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// Write `tbox-report.1` and a page per subcommand into DIR (which must exist) instead of
    /// printing the main page: the main page's "see also" names those pages.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// As JSON, for scripts and desktop widgets.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only this project.
    #[arg(long, value_name = "P")]
    pub project: Option<String>,
    /// The last N builds (0: all that are kept).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub last: usize,
    /// As JSON lines, one build each.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// How long, like 2h, 30m or 1d [default: until `resume`].
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The project.
    #[arg(long, value_name = "P")]
    pub project: String,
    /// The project's private key (PEM).
    #[arg(long, value_name = "PROJECT.pem")]
    pub key: PathBuf,
    /// The tbox server's base URL.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The branch to build.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// A commit to build [default: the branch's head when each builder fetches].
    #[arg(long, value_name = "SHA")]
    pub revision: Option<String>,
    /// How many distinct builders should build it.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub builders: u32,
    /// A capability builders must have (repeat for several).
    #[arg(long = "requires", value_name = "CAP")]
    pub requires: Vec<String>,
    /// How long builders may take (e.g. 24h, 3d) [default: no deadline].
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<String>,
    /// Ask for agreement: K finished builds from distinct owners (or builders) must report
    /// the same result, failing tests and artifact digests; a dispute opens another slot (at
    /// most 3 more). K is at most --builders.
    #[arg(long, value_name = "K")]
    pub quorum: Option<u32>,
    /// What counts as distinct for --quorum: owner (one volunteer's machines count once) or
    /// builder.
    #[arg(long, value_name = "owner|builder", default_value = "owner", requires = "quorum",
          value_parser = ["owner", "builder"])]
    pub distinct: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Seconds between the periodic builds of `run` (each builds only a changed revision).
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub every: u64,
    /// Stop after this many builds (for tests and trials) [default: never].
    #[arg(long, value_name = "N", hide = true)]
    pub max_builds: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The project's page on its tbox server, e.g. `https://tbox.example.org/projects/demo`.
    pub url: String,
    /// The project's key fingerprint (SHA256:…), as the project publishes it (README, website).
    /// Without it, the server's keys are shown and you are asked to confirm one on a terminal.
    #[arg(long, value_name = "SHA256:FP")]
    pub key: Option<String>,
    /// This machine's builder name [default: the config's, or OS-ARCH-RANDOM, e.g. debian12-x86_64-3f9c0a].
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// The branch to build [default: the first plain branch name the recipe allows, else main].
    #[arg(long)]
    pub branch: Option<String>,
    /// Where the source is checked out and built [default: ~/.local/share/tbox/work/PROJECT].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// How the admins can reach you (sent with the registration).
    #[arg(long, value_name = "EMAIL")]
    pub owner: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The project to leave.
    pub project: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum RecipeCommand {
    /// Sign a recipe with the project's private key: writes RECIPE.sig next to it (the same
    /// bytes as `openssl dgst -sha256 -sign project.pem recipe.toml | base64 -w0`).
    #[command(after_help = MAINTAINER_EXIT_CODES)]
    Sign(RecipeSignArgs),
    /// Check a recipe and its signature against a public key, as a volunteer would.
    #[command(after_help = MAINTAINER_EXIT_CODES)]
    Verify(RecipeVerifyArgs),
    /// Publish a signed recipe to a server (PUT, with the .sig next to the file).
    #[command(after_help = MAINTAINER_EXIT_CODES)]
    Publish(RecipePublishArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Sign a key list (`tbox-keys/1`) with a key in force now: writes FILE.sig. With --add,
    /// --revoke or --expires, first writes the next version of FILE (or, with --project, a
    /// first one listing the signing key).
    #[command(after_help = KEYS_HELP)]
    Sign(KeysSignArgs),
    /// Publish a signed key list to a server (PUT, with the .sig next to the file).
    #[command(after_help = MAINTAINER_EXIT_CODES)]
    Publish(KeysPublishArgs),
}

const KEYS_HELP: &str = "\
Rotating, so that volunteers never meet a recipe signed by a key out of force:
  1. keys sign keys.toml --key old.pem --add new.pub       then keys publish (both in force)
  2. recipe sign recipe.toml --key new.pem                  then recipe publish
  3. keys sign keys.toml --key new.pem --revoke SHA256:OLD  then keys publish
Volunteers who pinned the old key follow; new ones pin the new key; nobody trusts a revoked key
again, whatever a mirror serves.

Exit codes: 0 done, 1 error here, 2 wrong command line (or a publication that needs --yes:
nothing was published), 3 the server could not be reached, 4 the server refused it.";

#[derive(Debug, Args)]
pub struct KeysSignArgs {
    /// The key list (TOML); made when --project is given and it does not exist.
    pub file: PathBuf,
    /// The private key that signs it: one the current list has in force (the pinned key, for a
    /// first list).
    #[arg(long, value_name = "KEY.pem")]
    pub key: PathBuf,
    /// Write a first key list for this project (listing the signing key).
    #[arg(long, value_name = "P")]
    pub project: Option<String>,
    /// Put this public key in force (repeat for several).
    #[arg(long = "add", value_name = "PUB.pem")]
    pub add: Vec<PathBuf>,
    /// Revoke this key for good (repeat for several); it leaves `keys`.
    #[arg(long = "revoke", value_name = "SHA256:FP")]
    pub revoke: Vec<String>,
    /// How long the list stays valid from now (at most 400d) [default: 365d when writing].
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
}

#[derive(Debug, Args)]
pub struct KeysPublishArgs {
    /// The key list (TOML), with its signature in FILE.sig.
    pub file: PathBuf,
    /// Its signature [default: FILE.sig].
    #[arg(long, value_name = "FILE")]
    pub sig: Option<PathBuf>,
    /// The tbox server's base URL.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// Publish even if volunteers would then refuse the project's current recipe (signed by a
    /// key this list takes out of force).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RecipeSignArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// The project's private key (PEM).
    #[arg(long, value_name = "PROJECT.pem")]
    pub key: PathBuf,
}

#[derive(Debug, Args)]
pub struct RecipeVerifyArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Its signature [default: RECIPE.sig].
    #[arg(long, value_name = "FILE")]
    pub sig: Option<PathBuf>,
    /// The project's public key (PEM; a private key works too).
    #[arg(long, value_name = "PROJECT.pub")]
    pub key: PathBuf,
    /// Also check that it is for this project.
    #[arg(long, value_name = "P")]
    pub project: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecipePublishArgs {
    /// The recipe (TOML), with its signature in RECIPE.sig.
    pub recipe: PathBuf,
    /// Its signature [default: RECIPE.sig].
    #[arg(long, value_name = "FILE")]
    pub sig: Option<PathBuf>,
    /// The tbox server's base URL.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// Publish even though it cuts joined volunteers off (a new repo, a new requirement, an
    /// expiry within a day): said first, and nothing is sent without it.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key [default: ~/.config/tbox/builder.pem].
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Key size (at least 2048).
    #[arg(long, default_value_t = 3072)]
    pub bits: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// A project to report for (repeat for several).
    #[arg(long = "project", required = true, value_name = "P")]
    pub projects: Vec<String>,
    /// How the admins can reach you [default: `owner` from the config].
    #[arg(long, value_name = "EMAIL")]
    pub owner: Option<String>,
    /// A word about this machine.
    #[arg(long)]
    pub description: Option<String>,
    /// Register under this name instead of the config's `builder` (taken by another machine,
    /// or its key lost), and make it the config's builder once the server accepts it.
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Only this project.
    #[arg(long, value_name = "P")]
    pub project: Option<String>,
    /// Build even if the revision has not changed since the last report.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[arg(long, value_name = "P")]
    pub project: String,
    /// success, warnings, failure, exception, skipped or cancelled.
    #[arg(long, value_name = "R")]
    pub result: String,
    /// A log file; each becomes one step (repeat for several).
    #[arg(long = "log", value_name = "FILE")]
    pub logs: Vec<PathBuf>,
    /// Step names, in the order of --log [default: each log's file name].
    #[arg(long = "step", value_name = "NAME")]
    pub steps: Vec<String>,
    /// The revision built [default: git rev-parse HEAD here].
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// The branch built [default: the project's branch in the config, else main].
    #[arg(long)]
    pub branch: Option<String>,
    /// JUnit XML files to read (globs, relative to the current directory).
    #[arg(long = "junit", value_name = "GLOB")]
    pub junit: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub common: Common,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
