//! Project configuration (`landfall.toml`), layered with figment:
//! built-in defaults < file < `[env.<name>]` section < `LANDFALL_*` variables < flags.
//!
//! The file is first checked on its own (unknown keys, wrong types) so its errors point at
//! file:line:column like a workflow's; figment then merges the layers and remembers where
//! each value came from, which `landfall config show` prints.
//!
//! Long because every section is declared three times, on purpose: the effective value
//! (`Config`), the file as written (`FileLayer`, every key optional, for located errors) and
//! an `[env.NAME]` section (`EnvLayer`); splitting them apart would hide that they must agree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Env;
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use landfall_engine::diag::{codes, Diagnostic, Report};
use landfall_engine::Source;
use landfall_steps::approval::policy::{check_policies, ApprovalPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The store (runs, checkpoints, audit, packages): a redb state file, or a PostgreSQL
    /// database shared by several workers (`postgres://user:password@host:port/db`).
    pub db: PathBuf,
    /// On a PostgreSQL store: how long a worker's hold on a run lasts unless renewed. A run
    /// whose worker died is resumed by another within this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Default `max_parallel` for runs whose workflow sets none.
    pub max_parallel: usize,
    /// Where workflow files live.
    pub workflows_dir: PathBuf,
    /// Where templates (CloudFormation, SCPs, rules, messages) live.
    pub templates_dir: PathBuf,
    /// How long running steps may finish after Ctrl-C before they are cancelled.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    pub aws: AwsConfig,
    pub slack: SlackConfig,
    /// Who must agree before Landfall changes a target (see `landfall_steps::approval::policy`).
    #[serde(default)]
    pub approval: ApprovalSettings,
    /// The limits of `landfall serve`'s HTTP listener.
    #[serde(default)]
    pub serve: ServeConfig,
    /// What files and templates may hold (file size, YAML expansion, fan-out, template fuel).
    #[serde(default)]
    pub limits: landfall_engine::Limits,
}

/// `[serve]`: what `landfall serve` admits. The defaults suit a server Slack calls directly;
/// behind a proxy every request comes from the proxy's address, so raise
/// `max_connections_per_peer` there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// A request's headers must arrive within this; also how long an idle connection stays.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this once its headers have.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open connections at most (kept below the open-file limit); when full, the longest idle
    /// connection is closed for a new one.
    pub max_connections: usize,
    /// Open connections from one address at most.
    pub max_connections_per_peer: usize,
    /// Largest request body, in bytes (`serve --max-body` wins). Slack repeats a whole modal
    /// in each of its button clicks: 1 MiB admits the largest views Slack allows.
    pub max_body: usize,
    /// Refused requests (bad signature, too large, too many connections) are counted and
    /// audited as one summary per this period.
    #[serde(with = "humantime_serde")]
    pub refusal_summary_every: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_peer: 64,
            max_body: 1024 * 1024,
            refusal_summary_every: Duration::from_secs(60),
        }
    }
}

/// `[approval]`: the operators' approval policies, one `[[approval.policies]]` table each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    #[serde(default)]
    pub policies: Vec<ApprovalPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Role Landfall assumes in member accounts created by AWS Organizations.
    pub member_role_name: String,
    /// Regions used when a customer names none.
    pub default_regions: Vec<String>,
    /// Requests per second Landfall sends to a service in one account × region, shared by
    /// every run of a process (token buckets; unset: only the SDK's adaptive throttling).
    #[serde(default)]
    pub rate_limits: RateLimits,
}

/// `[aws.rate_limits]`: requests per second per service, in one account × region.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudformation: Option<u32>,
}

impl RateLimits {
    /// By service name, as `landfall_steps::Settings` takes them.
    pub fn by_service(&self) -> std::collections::BTreeMap<String, u32> {
        [
            ("organizations", self.organizations),
            ("iam", self.iam),
            ("cloudformation", self.cloudformation),
        ]
        .into_iter()
        .filter_map(|(s, n)| n.map(|n| (s.to_string(), n)))
        .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Bot token (`xoxb-…`). Prefer the `SLACK_BOT_TOKEN` variable to writing it in a file.
    #[serde(default)]
    pub bot_token: Option<String>,
    /// Signing secret for verifying Slack's requests.
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// Channel for runs started from the CLI.
    #[serde(default)]
    pub default_channel: Option<String>,
    /// App-level token (`xapp-…`) for `serve --socket-mode`. Prefer `SLACK_APP_TOKEN`.
    #[serde(default)]
    pub app_token: Option<String>,
    /// Slack's Web API base URL (a proxy, or a test server); `SLACK_API_URL` wins.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Slack users allowed to use `/landfall` (added to `serve --allow-user`).
    #[serde(default)]
    pub allow_users: Vec<String>,
    /// Channels from which `/landfall` may be used (added to `serve --allow-channel`).
    #[serde(default)]
    pub allow_channels: Vec<String>,
    /// The Slack app's client id, for OAuth installs (`/slack/install`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The Slack app's client secret, for OAuth installs. Prefer `SLACK_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Where installs send people to authorise the app (Slack's own page by default).
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// The OAuth redirect URL registered with the app, when it is not the default one.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// The slash command the app registers (`/landfall` by default): any other is refused.
    #[serde(default)]
    pub command: Option<String>,
    /// The workspace (`T…`) or Enterprise Grid organization (`E…`) this app serves: requests
    /// and installs from any other are refused. Unset: any workspace the app is in.
    #[serde(default)]
    pub team_id: Option<String>,
    /// The app's id (`A…`, Basic Information page): requests naming another app are refused.
    #[serde(default)]
    pub app_id: Option<String>,
}

impl SlackConfig {
    /// Slack's Web API: `api_url` when set, else Slack's own.
    pub fn api_url(&self) -> String {
        self.api_url
            .clone()
            .unwrap_or_else(|| "https://slack.com/api".into())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db: PathBuf::from(".landfall/state.redb"),
            lease: landfall_engine::store::DEFAULT_LEASE,
            max_parallel: 8,
            workflows_dir: PathBuf::from("workflows"),
            templates_dir: PathBuf::from("templates"),
            grace: Duration::from_secs(10),
            aws: AwsConfig {
                member_role_name: "OrganizationAccountAccessRole".into(),
                default_regions: vec!["us-east-1".into()],
                rate_limits: RateLimits::default(),
            },
            slack: SlackConfig::default(),
            approval: ApprovalSettings::default(),
            serve: ServeConfig::default(),
            limits: landfall_engine::Limits::default(),
        }
    }
}

/// Keys whose values are never printed.
const SECRET_KEYS: &[&str] = &[
    "slack.bot_token",
    "slack.signing_secret",
    "slack.app_token",
    "slack.client_secret",
];

/// The `slack.*` keys Slack's own variable names set (`SLACK_BOT_TOKEN` → `slack.bot_token`),
/// as Slack's documentation and tools name them.
const SLACK_VARIABLES: &[&str] = &[
    "bot_token",
    "signing_secret",
    "app_token",
    "api_url",
    "client_id",
    "client_secret",
    "authorize_url",
    "redirect_url",
];

/// The file's shape: every field optional, plus `[env.<name>]` overlays.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct FileLayer {
    db: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    lease: Option<Duration>,
    max_parallel: Option<usize>,
    workflows_dir: Option<PathBuf>,
    templates_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    grace: Option<Duration>,
    aws: Option<AwsLayer>,
    slack: Option<SlackLayer>,
    approval: Option<ApprovalSettings>,
    serve: Option<ServeLayer>,
    limits: Option<landfall_engine::Limits>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, EnvLayer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct EnvLayer {
    db: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    lease: Option<Duration>,
    max_parallel: Option<usize>,
    workflows_dir: Option<PathBuf>,
    templates_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    grace: Option<Duration>,
    aws: Option<AwsLayer>,
    slack: Option<SlackLayer>,
    approval: Option<ApprovalSettings>,
    serve: Option<ServeLayer>,
    limits: Option<landfall_engine::Limits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ServeLayer {
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    body_read_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    max_body: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    refusal_summary_every: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct AwsLayer {
    member_role_name: Option<String>,
    default_regions: Option<Vec<String>>,
    rate_limits: Option<RateLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SlackLayer {
    bot_token: Option<String>,
    signing_secret: Option<String>,
    default_channel: Option<String>,
    app_token: Option<String>,
    api_url: Option<String>,
    allow_users: Option<Vec<String>>,
    allow_channels: Option<Vec<String>>,
    client_id: Option<String>,
    client_secret: Option<String>,
    authorize_url: Option<String>,
    redirect_url: Option<String>,
    command: Option<String>,
    team_id: Option<String>,
    app_id: Option<String>,
}

/// Values given on the command line (the top layer).
#[derive(Debug, Default, Serialize)]
pub struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself is wrong: a located report.
    #[error("invalid configuration file")]
    File(Box<Report>),
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("unknown environment `{name}` (the file defines: {known})")]
    UnknownEnv { name: String, known: String },
    #[error("invalid configuration: {0}")]
    Merge(String),
}

/// `SLACK_*` variables (set and not empty) as the `slack.*` keys, always as text: figment's
/// own `Env` would read a client id such as `1234.5678` as a number.
struct SlackEnv;

impl Provider for SlackEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(SLACK_ENV)
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut slack = Dict::new();
        for key in SLACK_VARIABLES {
            let var = format!("SLACK_{}", key.to_ascii_uppercase());
            if let Some(v) = std::env::var(&var).ok().filter(|v| !v.is_empty()) {
                slack.insert(key.to_string(), v.into());
            }
        }
        let mut top = Dict::new();
        if !slack.is_empty() {
            top.insert("slack".into(), slack.into());
        }
        Ok(Profile::Default.collect(top))
    }
}

const SLACK_ENV: &str = "SLACK_* environment";

/// A named provider, so `config show` can say "landfall.toml [env.prod]".
struct Layer {
    name: String,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn dict_of<T: Serialize>(v: &T) -> Dict {
    figment::value::Value::serialize(v)
        .ok()
        .and_then(|v| v.into_dict())
        .unwrap_or_default()
}

pub struct Loaded {
    pub config: Config,
    figment: Figment,
}

/// Finds and loads the configuration. `path` = `--config`; otherwise `./landfall.toml` if it
/// exists.
pub fn load(path: Option<&Path>, env: Option<&str>, flags: Flags) -> Result<Loaded, ConfigError> {
    let mut fig = Figment::from(Layer {
        name: "default".into(),
        dict: dict_of(&Config::default()),
    });
    let file = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("landfall.toml")).filter(|p| p.exists()),
    };
    if let Some(file) = &file {
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        check_file(&shown, &text)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let envs = match table.remove("env") {
            Some(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let env_names: Vec<String> = envs.keys().cloned().collect();
        fig = fig.merge(Layer {
            name: shown.clone(),
            dict: dict_of(&table),
        });
        if let Some(name) = env {
            match envs.get(name) {
                Some(toml::Value::Table(t)) => {
                    fig = fig.merge(Layer {
                        name: format!("{shown} [env.{name}]"),
                        dict: dict_of(t),
                    })
                }
                _ => {
                    return Err(ConfigError::UnknownEnv {
                        name: name.to_string(),
                        known: if env_names.is_empty() {
                            "none".into()
                        } else {
                            env_names.join(", ")
                        },
                    })
                }
            }
        }
    } else if let Some(name) = env {
        return Err(ConfigError::UnknownEnv {
            name: name.to_string(),
            known: "no landfall.toml found".into(),
        });
    }
    fig = fig
        .merge(SlackEnv)
        .merge(
            Env::prefixed("LANDFALL_")
                .ignore(&["env", "config", "data_key", "log"])
                .split("__"),
        )
        .merge(Layer {
            name: "command line".into(),
            dict: dict_of(&flags),
        });
    let config: Config = fig
        .extract()
        .map_err(|e| ConfigError::Merge(e.to_string()))?;
    if config.max_parallel == 0 {
        return Err(ConfigError::Merge("max_parallel must be at least 1".into()));
    }
    let sv = &config.serve;
    for (key, zero) in [
        ("serve.max_connections", sv.max_connections == 0),
        (
            "serve.max_connections_per_peer",
            sv.max_connections_per_peer == 0,
        ),
        ("serve.max_body", sv.max_body == 0),
        (
            "serve.header_read_timeout",
            sv.header_read_timeout.is_zero(),
        ),
        ("serve.body_read_timeout", sv.body_read_timeout.is_zero()),
        (
            "serve.refusal_summary_every",
            sv.refusal_summary_every.is_zero(),
        ),
        ("limits.max_file_bytes", config.limits.max_file_bytes == 0),
        ("limits.max_yaml_nodes", config.limits.max_yaml_nodes == 0),
        ("limits.max_yaml_depth", config.limits.max_yaml_depth == 0),
        ("limits.max_fan_out", config.limits.max_fan_out == 0),
        ("limits.template_fuel", config.limits.template_fuel == 0),
    ] {
        if zero {
            return Err(ConfigError::Merge(format!("{key} must be more than 0")));
        }
    }
    let problems = check_policies(&config.approval.policies);
    if !problems.is_empty() {
        return Err(ConfigError::Merge(
            problems
                .iter()
                .map(|(path, msg)| format!("approval.{path}: {msg}"))
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    Ok(Loaded {
        config,
        figment: fig,
    })
}

fn check_file(name: &str, text: &str) -> Result<(), ConfigError> {
    if let Err(e) = toml::from_str::<FileLayer>(text) {
        let mut d = Diagnostic::error(codes::CONFIG_INVALID, e.message().to_string())
            .with_help("see README.md, section Configuration, for the keys and their types");
        if let Some(span) = e.span() {
            d = d.with_span(span, "here");
        }
        return Err(ConfigError::File(Box::new(Report::new(
            Source::new(name, text),
            None,
            vec![d],
        ))));
    }
    Ok(())
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// One effective setting: its value (secrets redacted) and the layer it came from.
#[derive(Debug, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: Value,
    pub source: String,
}

impl Loaded {
    pub fn settings(&self) -> Vec<Setting> {
        let mut flat = Vec::new();
        flatten(
            "",
            &serde_json::to_value(&self.config).unwrap_or_default(),
            &mut flat,
        );
        flat.into_iter()
            .map(|(key, value)| {
                let source = self
                    .figment
                    .find_metadata(&key)
                    .map(|m| match &m.source {
                        Some(figment::Source::File(p)) => p.display().to_string(),
                        // The variable itself, so it can be found and unset.
                        _ if m.name == SLACK_ENV => format!(
                            "env SLACK_{}",
                            key.trim_start_matches("slack.").to_ascii_uppercase()
                        ),
                        _ if m.name.starts_with("`LANDFALL_`") => format!(
                            "env LANDFALL_{}",
                            key.replace('.', "__").to_ascii_uppercase()
                        ),
                        _ => m.name.to_string(),
                    })
                    .unwrap_or_else(|| "default".into());
                let value = if SECRET_KEYS.contains(&key.as_str()) && !value.is_null() {
                    Value::String("***".into())
                } else if key == "db" {
                    // A database URL may hold a password.
                    match value.as_str() {
                        Some(url) => Value::String(landfall_engine::store::redacted(url)),
                        None => value,
                    }
                } else {
                    value
                };
                Setting { key, value, source }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("landfall.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            let p = write(
                &dir,
                "max_parallel = 3\ndb = \"file.redb\"\n[env.prod]\nmax_parallel = 5\n[aws]\ndefault_regions = [\"eu-west-1\"]\n",
            );
            let c = load(Some(&p), None, Flags::default()).unwrap().config;
            assert_eq!(c.max_parallel, 3);
            assert_eq!(c.aws.default_regions, ["eu-west-1"]);
            assert_eq!(c.grace, Duration::from_secs(10));

            let c = load(Some(&p), Some("prod"), Flags::default())
                .unwrap()
                .config;
            assert_eq!(c.max_parallel, 5);

            jail.set_env("LANDFALL_MAX_PARALLEL", "7");
            let c = load(Some(&p), Some("prod"), Flags::default())
                .unwrap()
                .config;
            assert_eq!(c.max_parallel, 7);

            let flags = Flags {
                max_parallel: Some(9),
                db: Some("flag.redb".into()),
            };
            let loaded = load(Some(&p), Some("prod"), flags).unwrap();
            assert_eq!(loaded.config.max_parallel, 9);
            assert_eq!(loaded.config.db, PathBuf::from("flag.redb"));
            let s = loaded.settings();
            let src = |k: &str| s.iter().find(|x| x.key == k).unwrap().source.clone();
            assert!(
                src("aws.default_regions").ends_with("landfall.toml"),
                "{}",
                src("aws.default_regions")
            );
            assert_eq!(src("grace"), "default");
            assert_eq!(src("db"), "command line");
            assert!(src("max_parallel") == "command line");
            Ok(())
        });
    }

    #[test]
    fn file_errors_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "max_parallel = 3\nmax_paralel = 4\n");
        match load(Some(&p), None, Flags::default()) {
            Err(ConfigError::File(r)) => {
                let d = &r.diagnostics[0];
                assert!(
                    d.message.contains("unknown field `max_paralel`"),
                    "{}",
                    d.message
                );
                assert_eq!(r.position(d), Some((2, 1)));
            }
            other => panic!("{:?}", other.map(|l| l.config)),
        }
        let p = write(dir.path(), "max_parallel = \"many\"\n");
        assert!(matches!(
            load(Some(&p), None, Flags::default()),
            Err(ConfigError::File(_))
        ));
    }

    #[test]
    fn unknown_env_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[env.prod]\nmax_parallel = 2\n");
        let e = load(Some(&p), Some("staging"), Flags::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("prod"), "{e}");
    }

    #[test]
    fn slack_variables_are_a_layer_that_show_names() {
        figment::Jail::expect_with(|jail| {
            let p = write(
                jail.directory(),
                "[slack]\nbot_token = \"xoxb-file\"\napi_url = \"http://file\"\n",
            );
            jail.set_env("SLACK_BOT_TOKEN", "xoxb-env");
            jail.set_env("SLACK_CLIENT_ID", "1234.5678");
            jail.set_env("SLACK_API_URL", "");
            jail.set_env("LANDFALL_SLACK__DEFAULT_CHANNEL", "C1");
            let l = load(Some(&p), None, Flags::default()).unwrap();
            let slack = &l.config.slack;
            assert_eq!(slack.bot_token.as_deref(), Some("xoxb-env"));
            // Text, not the number 1234.5678.
            assert_eq!(slack.client_id.as_deref(), Some("1234.5678"));
            // An empty variable does not hide the file's value.
            assert_eq!(slack.api_url(), "http://file");
            let s = l.settings();
            let src = |k: &str| s.iter().find(|x| x.key == k).unwrap().source.clone();
            assert_eq!(src("slack.bot_token"), "env SLACK_BOT_TOKEN");
            assert_eq!(src("slack.client_id"), "env SLACK_CLIENT_ID");
            assert_eq!(
                src("slack.default_channel"),
                "env LANDFALL_SLACK__DEFAULT_CHANNEL"
            );
            assert!(src("slack.api_url").ends_with("landfall.toml"));
            let tok = s.iter().find(|x| x.key == "slack.bot_token").unwrap();
            assert_eq!(tok.value, Value::String("***".into()));
            Ok(())
        });
    }

    #[test]
    fn approval_policies_are_read_located_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = "[[approval.policies]]\nname = \"production\"\nmatch = { environment = [\"production\"] }\nmin_approvals = 2\napprovers = [\"U1\", \"cli:alice\"]\nexpires_after = \"8h\"\n";
        let l = load(Some(&write(dir.path(), good)), None, Flags::default()).unwrap();
        let p = &l.config.approval.policies[0];
        assert_eq!(p.min_approvals, 2);
        assert!(p.forbid_requester, "the default");
        assert_eq!(p.expires_after, Duration::from_secs(8 * 3600));
        // A typo inside a policy points at its line.
        let typo = good.replace("min_approvals", "min_aprovals");
        match load(Some(&write(dir.path(), &typo)), None, Flags::default()) {
            Err(ConfigError::File(r)) => {
                let d = &r.diagnostics[0];
                assert!(d.message.contains("min_aprovals"), "{}", d.message);
                assert_eq!(r.position(d).map(|(line, _)| line), Some(4));
            }
            other => panic!("{:?}", other.map(|l| l.config)),
        }
        // A policy that can never be met is refused, by its path.
        let impossible = good.replace("min_approvals = 2", "min_approvals = 3");
        let e = load(
            Some(&write(dir.path(), &impossible)),
            None,
            Flags::default(),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .contains("approval.policies[0].min_approvals: 3 approvals can never be given by 2 approver(s)"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_redacted_in_show() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[slack]\nbot_token = \"xoxb-secret\"\n");
        let s = load(Some(&p), None, Flags::default()).unwrap().settings();
        let tok = s.iter().find(|x| x.key == "slack.bot_token").unwrap();
        assert_eq!(tok.value, Value::String("***".into()));
    }

    #[test]
    fn the_server_allowlist_and_app_token_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[slack]\nallow_users = [\"U1\", \"U2\"]\nallow_channels = [\"C9\"]\napp_token = \"xapp-secret\"\n",
        );
        let l = load(Some(&p), None, Flags::default()).unwrap();
        assert_eq!(l.config.slack.allow_users, ["U1", "U2"]);
        assert_eq!(l.config.slack.allow_channels, ["C9"]);
        let s = l.settings();
        let tok = s.iter().find(|x| x.key == "slack.app_token").unwrap();
        assert_eq!(tok.value, Value::String("***".into()));
    }
}
