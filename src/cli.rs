//! The command line (clap). Help texts teach: each command says what it does, what it
//! prints, and its exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0    succeeded
  1    the run failed or was cancelled (or an audit chain is broken)
  2    invalid workflow, input or usage: nothing ran
  3    environment error (state file unusable, …)
  4    refused: the workflow's concurrency key is taken (`on_conflict: refuse`): nothing ran
  130  interrupted (Ctrl-C): `landfall resume RUN_ID` continues";

const MIGRATE_HELP: &str = "\
Then point Landfall at the database: `db = \"postgres://…\"` in landfall.toml, or
LANDFALL_DB. The source is left as it was.

Exit codes:
  0    copied, every audit chain verified in the target
  1    a chain did not verify after the copy
  2    usage: the target is not a PostgreSQL URL or is not empty, or a run is live on the source
  3    a store cannot be opened or written";

#[derive(Debug, Parser)]
#[command(
    name = "landfall",
    version,
    about = "Declarative workflows that onboard customers onto AWS and provision their infrastructure",
    long_about = "Landfall runs workflow files (YAML or TOML) as a DAG of steps, checkpoints every \
step so a crash never loses a run, keeps a hash-chained audit trail, and lets people start and \
follow runs from Slack.\n\nStart with `landfall validate workflows/*.yaml`, then `landfall run FILE`.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Project configuration file [default: ./landfall.toml if present]
    #[arg(long, global = true, env = "LANDFALL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Configuration environment: the `[env.NAME]` section of the config file
    #[arg(long = "env", global = true, env = "LANDFALL_ENV", value_name = "NAME")]
    pub env_name: Option<String>,
    /// State file, or a PostgreSQL database shared by several workers (postgres://…)
    /// [default: .landfall/state.redb]
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub db: Option<PathBuf>,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// More logs (-v info, -vv debug); logs go to stderr
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print only errors and the requested output
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check workflow files and report every problem with file:line:column; runs nothing
    #[command(after_help = "Exit codes: 0 all valid, 2 at least one error.")]
    Validate {
        /// Workflow files (YAML, TOML or JSON)
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print the diagnostics as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Print a workflow's step graph (Graphviz dot or Mermaid)
    Graph {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Run a workflow
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Show what a workflow would change, changing nothing: every plugin reads, none writes;
    /// the plan is stored with its digest (what approvals name)
    #[command(after_help = PLAN_HELP)]
    Plan(PlanArgs),
    /// List or show stored plans
    Plans {
        #[command(subcommand)]
        command: PlansCommand,
    },
    /// Continue an interrupted run from its last checkpoint (uses the workflow as it was at start)
    #[command(after_help = EXIT_CODES)]
    Resume {
        run_id: String,
        /// Print the run as JSON on stdout when it ends
        #[arg(long)]
        json: bool,
    },
    /// Run a finished run that failed (or was cancelled) again where it failed: its failed,
    /// cancelled and skipped nodes, the plans upstream of them made again, what follows them
    /// activated anew; succeeded nodes keep their outputs. Same run id and idempotency keys;
    /// the audit records it as a new attempt of the run
    #[command(after_help = EXIT_CODES)]
    Redrive {
        run_id: String,
        /// Run this step (or node, `deploy[3]`) and what follows it again instead, also in a
        /// run that succeeded
        #[arg(long, value_name = "STEP|NODE")]
        from: Option<String>,
        /// Print the run as JSON on stdout when it ends
        #[arg(long)]
        json: bool,
    },
    /// List runs, newest first, or show one run's nodes
    Status {
        /// A run id; without it, lists recent runs
        run_id: Option<String>,
        /// Print JSON on stdout
        #[arg(long)]
        json: bool,
        /// How many runs to list
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show a run's audit trail; --verify checks its hash chain
    #[command(
        after_help = "Exit codes: 0 intact (or shown), 1 the chain is broken, 2 no such run."
    )]
    Audit {
        /// A run id, or `-` for the entries that belong to no run (refused Slack requests)
        run_id: String,
        /// Check the hash chain and report the first broken entry
        #[arg(long)]
        verify: bool,
        /// Print JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Serve Slack: slash commands, mentions and approval buttons start and steer runs, over
    /// HTTP (needs SLACK_SIGNING_SECRET) or Socket Mode (--socket-mode, needs SLACK_APP_TOKEN)
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Approve what a waiting `approval` step asks for (the run continues; from any process)
    #[command(after_help = DECISION_HELP)]
    Approve(DecisionArgs),
    /// Reject what a waiting `approval` step asks for (the step, and so the run, fails)
    #[command(after_help = DECISION_HELP)]
    Reject(DecisionArgs),
    /// List the step plugins and the fields their `with:` takes
    Steps {
        /// Print JSON (with each plugin's JSON Schema) on stdout
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of workflow files (for editor completion)
    Schema,
    /// Render a customer's package (CloudFormation stacks, manifest, SCPs) into a directory,
    /// without touching AWS
    Render {
        /// The customer's requirements (YAML, TOML or JSON)
        #[arg(value_name = "REQUIREMENTS")]
        requirements: PathBuf,
        /// Where to write `stacks/`, `scp/` and `manifest.json`
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Re-seal the secrets in the state file (installed Slack tokens) under a new data key,
    /// all in one transaction; then give Landfall the new key
    #[command(after_help = ROTATE_HELP)]
    RotateKey {
        /// File holding the current key (64 hex digits); or set LANDFALL_DATA_KEY
        #[arg(long, value_name = "FILE")]
        data_key_file: Option<PathBuf>,
        /// File holding the new key (64 hex digits, e.g. `openssl rand -hex 32 > new.key`)
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Copy a store into an empty PostgreSQL database: runs, nodes, audit chains (verified
    /// after the copy), packages, plans, signals, annotations and sealed secrets. Nothing
    /// may run on the source meanwhile
    #[command(after_help = MIGRATE_HELP)]
    Migrate {
        /// The store to copy: a state file (or a `postgres://` URL)
        #[arg(long, value_name = "DB")]
        from: String,
        /// The PostgreSQL database to fill (`postgres://user:password@host:port/db`); it must
        /// hold nothing yet
        #[arg(long, value_name = "URL")]
        to: String,
        /// Print what was copied as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Inspect published packages (versioned, content-addressed CloudFormation sets)
    Packages {
        #[command(subcommand)]
        command: PackagesCommand,
    },
    /// Inspect the configuration
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Slack app administration (install links)
    Slack {
        #[command(subcommand)]
        command: SlackCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SlackCommand {
    /// Make a one-time link that installs the Slack app (OAuth); `/slack/install` refuses
    /// anyone without one
    #[command(after_help = INSTALL_LINK_HELP)]
    InstallLink {
        /// How long the link stays valid
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
        expires: std::time::Duration,
        /// Where `landfall serve` is reached from the browser [default: the origin of
        /// slack.redirect_url, else http://127.0.0.1:3000]
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        /// File holding the data key (64 hex digits); or set LANDFALL_DATA_KEY. The same key
        /// `landfall serve` uses
        #[arg(long, value_name = "FILE")]
        data_key_file: Option<PathBuf>,
        /// Print the link and its expiry as JSON on stdout
        #[arg(long)]
        json: bool,
    },
}

const INSTALL_LINK_HELP: &str = "\
The link is valid once, until it expires; open it in the browser that will finish the install \
(the install is tied to that browser by a cookie). With slack.team_id set, only that workspace \
can be installed; without it, an install for another workspace never replaces the current one.\n\n\
Example:\n  \
landfall slack install-link --base-url https://landfall.example.com --expires 30m\n\n\
Exit codes: 0 made, 2 OAuth not configured or no data key.";

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration and where each value came from (secrets redacted)
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Every plan, newest first
    List {
        #[arg(long)]
        json: bool,
    },
    /// One plan, node by node, with its changes
    Show {
        #[arg(value_name = "PLAN_ID")]
        plan_id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PackagesCommand {
    /// Every package version, newest first
    List {
        #[arg(long)]
        json: bool,
    },
    /// One version's manifest and files (`acme-baseline@3`, `acme-baseline@latest`)
    Show {
        #[arg(value_name = "ID[@VERSION]")]
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a version's files and manifest.json into a directory
    Export {
        #[arg(value_name = "ID@VERSION")]
        reference: String,
        dir: PathBuf,
    },
    /// Unified diff between two versions (exit 0 identical, 1 different)
    Diff {
        #[arg(value_name = "ID@A")]
        a: String,
        #[arg(value_name = "ID@B")]
        b: String,
    },
}

const DECISION_HELP: &str =
    "The decision binds to the digest the step shows (`landfall status RUN` lists waiting \
nodes); if what waits for approval changed, --digest makes the command refuse instead.\n\n\
Exit codes: 0 recorded, 1 the request changed (--digest differs), 2 no such run or node, or the \
node is not waiting for an approval.";

const SERVE_HELP: &str = "\
Environment: SLACK_SIGNING_SECRET (HTTP), SLACK_APP_TOKEN (Socket Mode), SLACK_BOT_TOKEN (threads \
and replies; without it they are printed here), SLACK_API_URL (default https://slack.com/api), \
SLACK_CLIENT_ID + SLACK_CLIENT_SECRET + LANDFALL_DATA_KEY (OAuth installs at /slack/install).\n\n\
Allowlists add up: --allow-user/--allow-channel and slack.allow_users/allow_channels in \
landfall.toml. A workflow's trigger.slack allowed_users/groups/channels narrow who may start it \
(groups are looked up with usergroups.users.list).\n\n\
Examples:\n  \
landfall serve --listen 0.0.0.0:3000 --allow-channel C0OPS\n  \
SLACK_APP_TOKEN=xapp-… landfall serve --socket-mode --allow-user U0123ABCD\n\n\
Exit codes: 0 stopped by a signal, 2 bad configuration, 3 cannot listen or connect.";

const ROTATE_HELP: &str = "\
Every secret must open with the current key, or nothing changes. Stop `landfall serve` first \
(it holds the key in memory), rotate, then start it with the new key.\n\n\
Example:\n  \
openssl rand -hex 32 > new.key && landfall rotate-key --data-key-file old.key --new-key-file new.key\n\n\
Exit codes: 0 re-sealed, 1 a secret did not open with the current key, 2 bad key or no state file.";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed)
    #[arg(long, default_value = "127.0.0.1:3000", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Slack user id allowed to use /landfall (repeatable). With no allowlist at all, nobody
    /// may start runs
    #[arg(long, value_name = "USER_ID")]
    pub allow_user: Vec<String>,
    /// Slack channel id from which /landfall may be used (repeatable)
    #[arg(long, value_name = "CHANNEL_ID")]
    pub allow_channel: Vec<String>,
    /// Directory of workflow files whose `trigger.slack` commands are served [default: the
    /// configuration's workflows_dir]
    #[arg(long, value_name = "DIR")]
    pub workflows: Option<PathBuf>,
    /// Largest request body accepted, in bytes [default: serve.max_body, 1 MiB]
    #[arg(long, value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// Take Slack's commands, mentions and button clicks over Socket Mode (a WebSocket this
    /// process opens) instead of HTTP requests: no public URL needed. Needs an app-level token
    /// (SLACK_APP_TOKEN, `xapp-…`); --listen still serves /healthz and OAuth installs
    #[arg(long)]
    pub socket_mode: bool,
    /// File holding the data key (64 hex digits) that seals stored Slack tokens; or set
    /// LANDFALL_DATA_KEY. Needed for OAuth installs (SLACK_CLIENT_ID, SLACK_CLIENT_SECRET)
    #[arg(long, value_name = "FILE")]
    pub data_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DecisionArgs {
    pub run_id: String,
    /// The waiting node (e.g. `approve`)
    pub node: String,
    /// Only decide if the request is still for this digest (or a prefix of it)
    #[arg(long, value_name = "DIGEST")]
    pub digest: Option<String>,
    /// A note kept with the decision in the audit log
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Inputs file (YAML, JSON or TOML) whose top-level keys are the workflow's inputs
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Set one input (wins over --input); repeatable. Non-string inputs are read as YAML:
    /// --set regions=[us-east-1,eu-west-1]
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
    /// Run id. Running again with the same id, workflow and inputs resumes that run instead
    /// of starting a duplicate
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Most nodes running at once (overrides the workflow and the configuration)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: Option<u32>,
    /// Apply a stored plan (`landfall plan`): the run takes the plan's inputs, and its
    /// `plan: true` steps take what was planned instead of planning again. Refused when FILE
    /// is not the file planned, or the plan expired or could not be planned whole
    #[arg(long, value_name = "PLAN_ID", conflicts_with_all = ["input", "sets"])]
    pub plan: Option<String>,
    /// Print the run as JSON on stdout when it ends
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The workflow file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Inputs file (YAML, JSON or TOML) whose top-level keys are the workflow's inputs
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Set one input (wins over --input); repeatable
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
    /// How long the plan may be applied (AWS drifts; a stale plan is refused)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub expires_in: std::time::Duration,
    /// Print the plan as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

const PLAN_HELP: &str = "\
Each node is marked: ~ changes, = no changes, ? changes unknown until apply (a plugin that
cannot plan, or inputs only apply can know: shown as (known after apply)), - skipped
(a false condition; failure branches, since a plan assumes success), x could not be planned.
`maybe` marks a node whose condition reads a value known only after apply.

Exit codes: 0 planned, 1 a node could not be planned, 2 invalid workflow or inputs.";

fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}
