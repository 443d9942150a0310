//! The command line: `tbox-server serve | migrate | project … | builder … | prune`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the command failed (bad key, unknown project or builder, database error, …)
  2  the command line is wrong";

/// Collects signed build reports from volunteers and shows them as a waterfall.
#[derive(Debug, Parser)]
#[command(name = "tbox-server", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// sqlite://PATH (created on first use) or postgres://USER@HOST/DB.
    #[arg(long, env = "TBOX_DATABASE_URL", default_value = "sqlite://tbox.db", value_name = "URL")]
    pub database: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and the pages (migrates the database first).
    #[command(after_help = EXIT_CODES)]
    Serve(ServeArgs),
    /// Create or update the database schema, then exit.
    #[command(after_help = EXIT_CODES)]
    Migrate(DbArgs),
    /// Manage projects.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Manage builders (volunteer machines) and their keys.
    #[command(subcommand)]
    Builder(BuilderCommand),
    /// Ask builders for builds of a project (as `tbox-report request` does, signed).
    #[command(subcommand)]
    Request(RequestCommand),
    /// Tell people when a builder breaks, is fixed, goes stale, is lost or appears: webhooks
    /// and e-mail.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Post commit statuses to GitHub, GitLab or Gitea/Forgejo: pending as soon as a revision
    /// is asked for or a build starts, one status per builder and a summary per revision.
    #[command(subcommand)]
    Forge(ForgeCommand),
    /// Delete builds that started before a given age, and logs no build uses any more.
    #[command(after_help = EXIT_CODES)]
    Prune(PruneArgs),
    /// Print the completion script of tbox-server for a shell (bash, zsh, fish, elvish, powershell),
    /// e.g. `tbox-server completions bash > /etc/bash_completion.d/tbox-server`.
    Completions(CompletionsArgs),
    /// Print tbox-server's manual page (roff), e.g. `tbox-server manpage | man -l -`; with `--dir`,
    /// write it and one page per subcommand (`tbox-server-serve.1`, …) there.
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
    /// Write `tbox-server.1` and a page per subcommand into DIR (which must exist) instead of
    /// printing the main page: the main page's "see also" names those pages.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "TBOX_BIND", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub bind: String,
    #[command(flatten)]
    pub db: DbArgs,
    /// Largest report body accepted, in bytes (after gzip decompression).
    #[arg(long, env = "TBOX_MAX_BODY", default_value_t = 32 << 20, value_name = "BYTES")]
    pub max_body: usize,
    /// Bytes per second a request body must average after its first minute (slower clients are
    /// cut off with 408). The default lets a 32 MiB report take over half an hour.
    #[arg(long, env = "TBOX_MIN_BODY_RATE", default_value_t = 16 << 10, value_name = "BYTES")]
    pub min_body_rate: u64,
    /// Bytes all request bodies being received may hold together; past that, uploads get 503
    /// and are tried again later (at least --max-body).
    #[arg(long, env = "TBOX_BODY_MEMORY", default_value_t = 256 << 20, value_name = "BYTES")]
    pub body_memory: usize,
    /// Seconds any request body may take before the minimum rate applies.
    #[arg(long, env = "TBOX_BODY_GRACE", default_value_t = 60, value_name = "SECONDS")]
    pub body_grace: u64,
    /// Open connections at most (default: what the open-files limit allows, less a reserve for
    /// the database and files).
    #[arg(long, env = "TBOX_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Open connections one client address may hold; a request on one more is answered 429 at
    /// once and its connection closed, so one client cannot hold every connection.
    #[arg(long, env = "TBOX_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_address: u64,
    /// Self-registrations per hour from one client address (IPv6: one /64), after a burst of 5.
    #[arg(long, env = "TBOX_REGISTRATIONS_PER_ADDRESS", default_value_t = 10, value_name = "N")]
    pub registrations_per_address: u32,
    /// Self-registrations per hour from everyone together, after a burst of 30.
    #[arg(long, env = "TBOX_REGISTRATIONS_PER_HOUR", default_value_t = 120, value_name = "N")]
    pub registrations_per_hour: u32,
    /// Self-registered builders that may wait for approval in one project; more are refused
    /// (429) until an administrator approves or rejects some.
    #[arg(long, env = "TBOX_MAX_PENDING", default_value_t = 50, value_name = "N")]
    pub max_pending: u32,
    /// A self-registration not approved within this long is deleted (the volunteer may register
    /// again), so that a queue filled and left does not stay full.
    #[arg(long, env = "TBOX_PENDING_EXPIRE", default_value = "14d", value_parser = parse_age, value_name = "AGE")]
    pub pending_expire: chrono::TimeDelta,
    /// Database connections to keep open.
    #[arg(long, env = "TBOX_POOL_SIZE", default_value_t = 16)]
    pub pool_size: u32,
    /// A builder not heard from for this long is marked stale (e.g. 48h, 7d).
    #[arg(long, env = "TBOX_STALE_AFTER", default_value = "48h", value_parser = parse_age, value_name = "AGE")]
    pub stale_after: chrono::TimeDelta,
    /// A build started this long ago with no `finished` report is shown as lost (e.g. 12h, 90m,
    /// 2d); a late `finished` report still completes it.
    #[arg(long, env = "TBOX_LOST_AFTER", default_value = "12h", value_parser = parse_age, value_name = "AGE")]
    pub lost_after: chrono::TimeDelta,
    /// A reverse proxy's address or network (e.g. 127.0.0.1/32, 10.0.0.0/8; repeat or separate
    /// with commas): only from these peers are `X-Forwarded-For`, `-Proto` and `-Host` believed,
    /// for rate limits, registration allowances, the access log and links.
    #[arg(long = "trusted-proxy", env = "TBOX_TRUSTED_PROXY", value_delimiter = ',', value_name = "CIDR",
          value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How log lines are written: `text` for people, `json` (one object per line: time, level,
    /// target, message) for log collectors.
    #[arg(long, env = "TBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Give this share (0 to 1) of the requests that ask for no quorum a second builder when
    /// their first answer arrives, and judge them as quorum 2; more often for builders with
    /// fewer than 10 agreements or with disputes (BOINC's adaptive replication). 0: off.
    #[arg(long, env = "TBOX_SPOT_CHECK", default_value_t = 0.0, value_parser = parse_fraction, value_name = "F")]
    pub spot_check: f64,
    /// Seconds between two searches for lost builds and builders gone stale (tests make it short).
    #[arg(long, default_value_t = 30, hide = true, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lost_check_every: u64,
    /// The address users reach this server at (e.g. `https://tbox.example.org`), used for the
    /// links in feeds and answers. Without it, links use the Host the client sent.
    #[arg(long, env = "TBOX_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// HTTP worker threads (default: one per CPU).
    #[arg(long, env = "TBOX_WORKERS")]
    pub workers: Option<usize>,
    /// How long a lease on a build request lasts unless its builder renews it; then the
    /// attempt is lost and another builder gets the slot (e.g. 10m, 90s).
    #[arg(long, env = "TBOX_LEASE_TTL", default_value = "10m", value_parser = parse_age, value_name = "AGE")]
    pub lease_ttl: chrono::TimeDelta,
    /// SMTP relay for e-mail notifications: smtp://HOST:PORT (plain), smtps://HOST:PORT (TLS),
    /// with USER:PASSWORD@ to log in. Without it this process sends only webhooks.
    #[arg(long, env = "TBOX_SMTP", value_name = "URL", requires = "mail_from", value_parser = parse_smtp_url)]
    pub smtp: Option<String>,
    /// Require STARTTLS on an smtp:// relay (the message is not sent if it cannot upgrade).
    #[arg(long, env = "TBOX_SMTP_STARTTLS", requires = "smtp")]
    pub smtp_starttls: bool,
    /// The From address of notification e-mail, e.g. "tbox <tbox@example.org>".
    #[arg(long, env = "TBOX_MAIL_FROM", value_name = "ADDR", requires = "smtp", value_parser = parse_address)]
    pub mail_from: Option<String>,
    /// Seconds before a failed notification is first tried again (tests make it short).
    #[arg(long, default_value_t = 10, hide = true, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=15))]
    pub notify_first_retry: u64,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Add a project.
    #[command(after_help = EXIT_CODES)]
    Add(ProjectAddArgs),
    /// List projects.
    List(DbArgs),
    /// Manage the keys allowed to sign the project's recipes.
    #[command(subcommand)]
    Key(ProjectKeyCommand),
    /// Manage the capabilities the project's recipes may require.
    #[command(subcommand)]
    Capability(CapabilityCommand),
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Subscribe a webhook or an e-mail address to a project's status changes.
    #[command(after_help = EXIT_CODES)]
    Add(NotifyAddArgs),
    /// List subscriptions (of one project, or all), with those failing for a while marked.
    List(NotifyListArgs),
    /// Remove a subscription, with its queued deliveries and their log.
    #[command(after_help = EXIT_CODES)]
    Remove(NotifyRemoveArgs),
    /// A project's newest deliveries: event, subscriber, state, attempts, last answer.
    #[command(after_help = EXIT_CODES)]
    Log(NotifyLogArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["webhook", "email"])))]
pub struct NotifyAddArgs {
    /// The project.
    pub project: String,
    /// POST a JSON body to this http(s) URL; Slack and Mattermost incoming webhooks work as
    /// they are (the body has a `text` field).
    #[arg(long, value_name = "URL", value_parser = parse_webhook_url)]
    pub webhook: Option<String>,
    /// The key of the body's HMAC-SHA256 signature, sent as `Tbox-Signature-256: sha256=<hex>`
    /// [default: a random one, printed once].
    #[arg(long, value_name = "SECRET", conflicts_with_all = ["secret_file", "email"])]
    pub secret: Option<String>,
    /// Read the secret from a file (its first line), keeping it out of the process list.
    #[arg(long, value_name = "PATH", conflicts_with = "email")]
    pub secret_file: Option<std::path::PathBuf>,
    /// Send a plain-text e-mail to this address (the server needs `serve --smtp`).
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    pub email: Option<String>,
    /// Only changes of this builder.
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Only changes on this branch (a builder going stale concerns every branch).
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,
    /// Let this webhook reach a loopback, private or link-local address (a receiver inside your
    /// own network); without it such targets are refused, now and at every delivery.
    #[arg(long, requires = "webhook")]
    pub allow_private_target: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum ForgeCommand {
    /// Post a project's commit statuses to a repository on a forge.
    #[command(after_help = EXIT_CODES)]
    Add(ForgeAddArgs),
    /// List forges told of commit statuses (of one project, or all); tokens are never shown.
    List(NotifyListArgs),
    /// Stop posting to a forge (its queued statuses and their log go with it).
    #[command(after_help = EXIT_CODES)]
    Remove(NotifyRemoveArgs),
}

/// Which forge's API a repository lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForgeKind {
    /// GitHub or GitHub Enterprise (`--api https://api.github.com`).
    Github,
    /// GitLab (`--api https://gitlab.com/api/v4`).
    Gitlab,
    /// Gitea or Forgejo (`--api https://codeberg.org/api/v1`).
    Gitea,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Gitea => "gitea",
        }
    }
}

#[derive(Debug, Args)]
pub struct ForgeAddArgs {
    /// The project whose builds are posted.
    pub project: String,
    /// Which forge's API.
    #[arg(long, value_enum)]
    pub kind: ForgeKind,
    /// The API's base URL, e.g. `https://api.github.com`, `https://gitlab.com/api/v4`,
    /// `https://codeberg.org/api/v1`.
    #[arg(long, value_name = "URL", value_parser = parse_forge_api)]
    pub api: String,
    /// The repository: OWNER/NAME (on GitLab also a group path, or the numeric project id).
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: String,
    /// A file holding the token (its first line): a GitHub token with "commit statuses: write",
    /// a GitLab token with the `api` scope, a Gitea/Forgejo token with repository write access.
    /// It is stored in the server's database and never printed.
    #[arg(long, value_name = "PATH")]
    pub token_file: std::path::PathBuf,
    /// The summary's context; each builder's is CONTEXT/BUILDER.
    #[arg(long, default_value = "tbox", value_name = "CONTEXT")]
    pub context: String,
    /// Let the API URL be a loopback, private or link-local address (a forge inside your own
    /// network); without it such targets are refused, now and at every delivery.
    #[arg(long)]
    pub allow_private_target: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct NotifyListArgs {
    /// Only this project's subscriptions.
    pub project: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct NotifyRemoveArgs {
    /// The subscription's number (see `notify list`).
    pub id: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct NotifyLogArgs {
    /// The project.
    pub project: String,
    /// Only this subscription's deliveries.
    #[arg(long, value_name = "ID")]
    pub subscription: Option<i64>,
    /// How many deliveries to show, newest first.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// Ask for builds: N distinct builders build a branch (at a revision) before a deadline.
    #[command(after_help = EXIT_CODES)]
    Add(RequestAddArgs),
    /// A project's newest requests and their attempts.
    List(ProjectOnlyArgs),
    /// Cancel an open request (its running attempts may still report).
    #[command(after_help = EXIT_CODES)]
    Cancel(RequestCancelArgs),
}

#[derive(Debug, Args)]
pub struct RequestAddArgs {
    /// The project.
    pub project: String,
    /// The branch to build.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Refused: volunteers build a named commit only when the project's key signed the
    /// request (`tbox-report request --revision`); an admin's request builds the branch's head.
    #[arg(long, value_name = "SHA", hide = true)]
    pub revision: Option<String>,
    /// How many distinct builders should build it.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub builders: u32,
    /// A capability builders must have (repeat for several).
    #[arg(long = "requires", value_name = "CAP")]
    pub requires: Vec<String>,
    /// How long builders may take to answer (e.g. 24h, 3d).
    #[arg(long, value_parser = parse_age, value_name = "AGE")]
    pub deadline: Option<chrono::TimeDelta>,
    /// Ask for agreement: K finished builds from distinct owners (or builders) must have the
    /// same result, failing tests and artifact digests; a dispute opens another slot.
    #[arg(long, value_name = "K")]
    pub quorum: Option<u32>,
    /// What counts as distinct for the quorum.
    #[arg(long, value_enum, default_value_t = DistinctArg::Owner, requires = "quorum")]
    pub distinct: DistinctArg,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `serve --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// env_logger's lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The log format the command asks for (only `serve` has a choice).
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Command::Serve(args) => args.log_format,
            _ => LogFormat::Text,
        }
    }
}

/// `--distinct`: what the answers making a quorum must come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DistinctArg {
    /// Distinct owners (a builder without an owner is its own owner).
    Owner,
    /// Distinct builders.
    Builder,
}

impl From<DistinctArg> for tbox_protocol::Distinct {
    fn from(d: DistinctArg) -> Self {
        match d {
            DistinctArg::Owner => tbox_protocol::Distinct::Owner,
            DistinctArg::Builder => tbox_protocol::Distinct::Builder,
        }
    }
}

#[derive(Debug, Args)]
pub struct RequestCancelArgs {
    /// The request's number.
    pub id: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProjectKeyCommand {
    /// Allow a key to sign recipes (its holder signs offline; volunteers pin its fingerprint).
    #[command(after_help = EXIT_CODES)]
    Add(ProjectKeyAddArgs),
    /// Stop accepting a key's signatures; volunteers stop trusting it and what it endorsed.
    #[command(after_help = EXIT_CODES)]
    Revoke(ProjectKeyRevokeArgs),
    /// List a project's keys: fingerprint, status, endorsing key.
    List(ProjectOnlyArgs),
}

#[derive(Debug, Args)]
pub struct ProjectKeyAddArgs {
    /// The project.
    pub project: String,
    /// The RSA public key, PEM, at least 2048 bits.
    #[arg(long, value_name = "PUBLIC_KEY.pem")]
    pub key: PathBuf,
    /// Add it even though no key volunteers trust endorses it (they would refuse what it signs).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ProjectKeyRevokeArgs {
    /// The project.
    pub project: String,
    /// The key's fingerprint, SHA256:….
    #[arg(long, value_name = "SHA256:FP")]
    pub key: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ProjectOnlyArgs {
    /// The project.
    pub project: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum CapabilityCommand {
    /// Register a capability name (or change its description).
    #[command(after_help = EXIT_CODES)]
    Add(CapabilityAddArgs),
    /// Remove a capability name.
    #[command(after_help = EXIT_CODES)]
    Remove(CapabilityRemoveArgs),
    /// List a project's capabilities.
    List(ProjectOnlyArgs),
}

#[derive(Debug, Args)]
pub struct CapabilityAddArgs {
    /// The project.
    pub project: String,
    /// The name recipes require and volunteers declare ([A-Za-z0-9._-], up to 64), e.g. docker.
    pub name: String,
    /// What a volunteer needs for it: a sentence or a URL explaining it.
    #[arg(long)]
    pub description: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct CapabilityRemoveArgs {
    /// The project.
    pub project: String,
    /// The capability name.
    pub name: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ProjectAddArgs {
    /// Short name used in URLs and reports ([A-Za-z0-9._-], up to 64).
    pub name: String,
    /// Title shown on pages (default: the name).
    #[arg(long)]
    pub title: Option<String>,
    /// The project's source repository.
    #[arg(long, value_name = "URL")]
    pub repo_url: Option<String>,
    /// Link for a revision, with {rev} where the commit id goes.
    #[arg(long, value_name = "TEMPLATE")]
    pub revision_url: Option<String>,
    /// Link for the changes between two revisions, with {from} and {to}
    /// (e.g. `https://github.com/o/r/compare/{from}...{to}`).
    #[arg(long, value_name = "TEMPLATE")]
    pub compare_url: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum BuilderCommand {
    /// Register a builder with its public key (active at once). For an existing builder this
    /// adds the key (rotation) and the projects.
    #[command(after_help = EXIT_CODES)]
    Add(BuilderAddArgs),
    /// Let a self-registered (pending) builder report.
    Approve(BuilderApproveArgs),
    /// Refuse a builder's reports from now on, or only one of its keys with --key.
    Revoke(BuilderRevokeArgs),
    /// List builders with their status, projects and keys.
    List(BuilderListArgs),
    /// Delete self-registered builders that are still pending (never approved).
    #[command(after_help = EXIT_CODES)]
    Reject(BuilderRejectArgs),
    /// Delete pending registrations older than an age (e.g. from cron: --older-than 14d).
    #[command(after_help = EXIT_CODES)]
    PrunePending(PruneArgs),
}

#[derive(Debug, Args)]
pub struct BuilderListArgs {
    /// Only builders waiting for approval.
    #[arg(long)]
    pub pending: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct BuilderRejectArgs {
    /// Pending builders to delete.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct BuilderAddArgs {
    /// The builder's name ([A-Za-z0-9._-], up to 64), e.g. alice-debian12-x86_64.
    pub name: String,
    /// A project it may report for (repeat for several).
    #[arg(long = "project", required = true, value_name = "P")]
    pub projects: Vec<String>,
    /// Its RSA public key, PEM (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY), at least 2048 bits.
    #[arg(long, value_name = "PUBLIC_KEY.pem")]
    pub key: PathBuf,
    /// How to reach the volunteer.
    #[arg(long, value_name = "EMAIL")]
    pub owner: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct BuilderNameArgs {
    pub name: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct BuilderApproveArgs {
    /// One or more builders (all are checked first: an unknown name approves none).
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct BuilderRevokeArgs {
    pub name: String,
    /// Revoke only this key (its SHA256:… fingerprint), e.g. after a rotation.
    #[arg(long, value_name = "FINGERPRINT")]
    pub key: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Age such as 90d, 12h, 30m or 2w.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: chrono::TimeDelta,
    #[command(flatten)]
    pub db: DbArgs,
}

/// An absolute http(s) URL with a host and a valid port: what a webhook can be posted to.
pub fn parse_webhook_url(url: &str) -> Result<String, String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "{url:?}: a webhook must be an http:// or https:// URL with a host, e.g. https://chat.example.org/hooks/abc"
        ));
    }
    // `Uri::port` hides a port that is not a number up to 65535; the authority still has it.
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    if let Some((_, port)) = host_port.rsplit_once(':').filter(|(_, p)| !p.contains(']'))
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("{url:?}: port {port} is not a port number (1 to 65535)"));
    }
    Ok(url.to_owned())
}

/// A forge's API base URL: http(s) with a host, no credentials (the token goes in a header),
/// no query or fragment (the status path is appended to it), without a trailing `/` (so that
/// `https://h/api/v1` and `https://h/api/v1/` are one forge).
pub fn parse_forge_api(url: &str) -> Result<String, String> {
    let example = "e.g. https://api.github.com, https://gitlab.com/api/v4 or https://codeberg.org/api/v1";
    if url.contains(['?', '#']) {
        return Err(format!("{url:?}: the API's base URL takes no query or fragment ({example})"));
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: the forge's API is an https:// URL with a host ({example})"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "no user or password in the URL (`forge list` shows the URL); the token file authenticates".to_owned()
        );
    }
    parse_webhook_url(url).map(|u| u.trim_end_matches('/').to_owned())
}

/// An e-mail address, plain (`dev@example.org`) or with a name (`Dev <dev@example.org>`).
pub fn parse_address(addr: &str) -> Result<String, String> {
    addr.parse::<lettre::message::Mailbox>().map(|m| m.to_string()).map_err(|e| {
        format!("{addr:?} is not an e-mail address ({e}): write name@example.org or \"Name <name@example.org>\"")
    })
}

/// `smtp://` or `smtps://` with a host.
pub fn parse_smtp_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("smtp://")
        .or_else(|| url.strip_prefix("smtps://"))
        .ok_or_else(|| "the relay is an smtp:// or smtps:// URL, e.g. smtp://127.0.0.1:25".to_owned())?;
    // The URL is not repeated: it may hold a password.
    if rest.rsplit('@').next().is_none_or(|h| h.is_empty() || h.starts_with(':')) {
        return Err("the relay URL names no host".to_owned());
    }
    Ok(url.to_owned())
}

/// Reads `90d`, `12h`, `30m`, `2w`, `45s` or a sum such as `1h30m`.
pub fn parse_age(s: &str) -> Result<chrono::TimeDelta, String> {
    // The protocol's grammar, the one recipes and the volunteer's config use.
    tbox_protocol::parse_duration(s)
        .and_then(|d| chrono::TimeDelta::from_std(d).ok())
        .ok_or_else(|| format!("{s:?} is not an age like 90d, 12h, 1h30m or 2w"))
}

/// A network (`10.0.0.0/8`) or a single address (`127.0.0.1`, `::1`) for `--trusted-proxy`.
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not an address or network like 10.0.0.0/8 or ::1"))
}

/// A fraction from 0 to 1 (`--spot-check`).
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction from 0 to 1 (such as 0.1)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn webhook_urls() {
        for ok in
            ["https://chat.example.org/hooks/x", "http://127.0.0.1:9099/h", "http://[::1]:8080/h", "http://[::1]/h"]
        {
            assert!(parse_webhook_url(ok).is_ok(), "{ok}");
        }
        for bad in ["ftp://e.org/h", "https:///h", "http://e.org:0/h", "http://e.org:65536/h", "/just/a/path"] {
            assert!(parse_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("90d"), Ok(chrono::TimeDelta::days(90)));
        assert_eq!(parse_age("2w"), Ok(chrono::TimeDelta::weeks(2)));
        assert_eq!(parse_age("1s"), Ok(chrono::TimeDelta::seconds(1)));
        assert_eq!(parse_age("1h30m"), Ok(chrono::TimeDelta::minutes(90)));
        assert!(parse_age("0s").is_err());
        assert!(parse_age("90").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("5y").is_err());
    }
}
