//! The commands, one file per family; this file holds what they share: dispatch, the one
//! table from a run's status to an exit code, the [`Failure`] that ends a command early, JSON
//! printing, and opening the state file and workflows. `main` is the only place that exits.
//!
//! Layering: commands may use `slack`, `render`, `progress` and `config`; nothing below them
//! uses a command (`tests/it/tidy.rs` checks that `src/slack/` never imports this module).

mod approve;
mod audit;
mod config;
mod migrate;
mod packages;
mod plan;
mod render;
mod rotate_key;
mod run;
mod serve;
mod slack;
mod status;
mod steps;
mod validate;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use landfall_engine::compile;
use landfall_engine::state::{RunStatus, Trigger};
use landfall_engine::store::{PgStore, RedbStore, Store, StoreError};
use landfall_engine::Source;
use landfall_engine::{Engine, EngineError, Registry, Workflow};
use serde_json::Value;

use crate::cli::{Cli, Command, ConfigCommand, SlackCommand};
use crate::config::{self as configuration, ConfigError, Flags, Loaded};
use crate::render as show;

pub use packages::diff_packages;
pub use status::run_json;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_INVALID: i32 = 2;
pub const EXIT_ENV: i32 = 3;
/// The workflow's concurrency key is taken and it refuses to queue: nothing ran.
pub const EXIT_REFUSED: i32 = 4;
pub const EXIT_INTERRUPTED: i32 = 130;

/// The exit code of a command that ran (or reported) a run: the one table.
///
/// `Running` is a run another process still executes (a `run --run-id` or `resume` that found
/// it busy between the look and the lock): not this command's failure, an environment matter.
pub fn exit_code(status: RunStatus) -> i32 {
    match status {
        RunStatus::Succeeded => EXIT_OK,
        RunStatus::Failed | RunStatus::Cancelled => EXIT_FAILED,
        RunStatus::Interrupted => EXIT_INTERRUPTED,
        RunStatus::Running | RunStatus::Queued => EXIT_ENV,
    }
}

/// A command that ends early: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_INVALID,
            message: message.into(),
        }
    }

    pub fn env(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_ENV,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Store(_) | EngineError::Busy(_) => EXIT_ENV,
            EngineError::Refused { .. } => EXIT_REFUSED,
            EngineError::NotRedrivable { .. } => EXIT_INVALID,
            EngineError::Conflict { .. }
            | EngineError::BadRunId(_)
            | EngineError::Finished(..)
            | EngineError::Stale(..)
            | EngineError::Inputs(_)
            | EngineError::NoSuchRun(_)
            | EngineError::NoSuchNode(..)
            | EngineError::NodeFinished(..)
            | EngineError::NoSuchPlan(_)
            | EngineError::PlanRefused { .. }
            | EngineError::ConcurrencyKey { .. }
            | EngineError::SecretInputs(_) => EXIT_INVALID,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// Whatever the state file says went wrong, it is the environment's problem, not the user's
/// input.
impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::env(e.to_string())
    }
}

type Res<T> = Result<T, Failure>;

pub struct App {
    pub cli_global: crate::cli::Global,
    pub loaded: Loaded,
    pub registry: Arc<Registry>,
}

pub async fn run(cli: Cli) -> i32 {
    let flags = Flags {
        db: cli.global.db.clone(),
        max_parallel: match &cli.command {
            Command::Run(a) => a.max_parallel.map(|n| n as usize),
            _ => None,
        },
    };
    let loaded = match configuration::load(
        cli.global.config.as_deref(),
        cli.global.env_name.as_deref(),
        flags,
    ) {
        Ok(l) => l,
        Err(ConfigError::File(r)) => {
            eprint!("{}", show::report(&r, show::stderr_color()));
            return EXIT_INVALID;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    // Before any workflow, inputs or requirements file is read.
    landfall_engine::set_limits(loaded.config.limits);
    let app = App {
        cli_global: cli.global,
        registry: registry_with_children(landfall_steps::registry(&landfall_steps::Settings {
            templates_dir: loaded.config.templates_dir.clone(),
            approval_policies: loaded.config.approval.policies.clone(),
            rate_limits: loaded.config.aws.rate_limits.by_service(),
        })),
        loaded,
    };
    let res = match cli.command {
        Command::Validate { files, json } => app.validate(&files, json),
        Command::Graph { file, format } => app.graph(&file, format),
        Command::Run(args) => app.run(args).await,
        Command::Plan(args) => app.plan(args).await,
        Command::Plans { command } => app.plans(command),
        Command::Resume { run_id, json } => app.resume(&run_id, json).await,
        Command::Redrive { run_id, from, json } => {
            app.redrive(&run_id, from.as_deref(), json).await
        }
        Command::Status {
            run_id,
            json,
            limit,
        } => app.status(run_id.as_deref(), json, limit),
        Command::Audit {
            run_id,
            verify,
            json,
        } => app.audit(&run_id, verify, json),
        Command::Serve(a) => app.serve(a).await,
        Command::Approve(a) => app.decide(a, landfall_steps::approval::Verdict::Approve),
        Command::Reject(a) => app.decide(a, landfall_steps::approval::Verdict::Reject),
        Command::Steps { json } => app.steps(json),
        Command::Schema => {
            print_json(&landfall_engine::workflow_json_schema());
            Ok(EXIT_OK)
        }
        Command::Config {
            command: ConfigCommand::Show { json },
        } => app.config_show(json),
        Command::Packages { command } => app.packages(command),
        Command::Migrate { from, to, json } => app.migrate(&from, &to, json),
        Command::RotateKey {
            data_key_file,
            new_key_file,
        } => app.rotate_key(data_key_file.as_deref(), &new_key_file),
        Command::Render { requirements, out } => app.render(&requirements, &out),
        Command::Slack {
            command:
                SlackCommand::InstallLink {
                    expires,
                    base_url,
                    data_key_file,
                    json,
                },
        } => app.install_link(expires, base_url, data_key_file.as_deref(), json),
    };
    match res {
        Ok(code) => code,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", f.message);
            }
            f.code
        }
    }
}

fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = writeln!(out, "{text}");
}

fn read_source(path: &Path) -> Res<Source> {
    Source::read(path).map_err(Failure::invalid)
}

/// The step plugins with `workflow` (child runs) added: it runs children with this very
/// registry, so it is given a weak reference once the registry is shared.
pub fn registry_with_children(
    mut registry: landfall_engine::Registry,
) -> Arc<landfall_engine::Registry> {
    let link = Arc::new(std::sync::OnceLock::new());
    registry.register(crate::child::ChildWorkflow {
        registry: Arc::clone(&link),
    });
    let registry = Arc::new(registry);
    let _ = link.set(Arc::downgrade(&registry));
    registry
}

/// Who a command run from a terminal acts as.
fn cli_trigger() -> Trigger {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    Trigger {
        source: "cli".into(),
        actor: format!("cli:{user}"),
        details: Value::Null,
    }
}

/// Ctrl-C or SIGTERM.
async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl App {
    fn quiet(&self) -> bool {
        self.cli_global.quiet
    }

    /// The PostgreSQL database `db` names, if it names one rather than a state file.
    fn postgres_url(&self) -> Option<&str> {
        self.loaded
            .config
            .db
            .to_str()
            .filter(|db| landfall_engine::store::is_postgres_url(db))
    }

    /// The store, as messages name it (a database URL without its password).
    fn db_shown(&self) -> String {
        landfall_engine::store::redacted(&self.loaded.config.db.display().to_string())
    }

    /// For commands that only read: a missing state file means "nothing yet", and is not
    /// created.
    fn existing_store(&self) -> Res<Option<Arc<dyn Store>>> {
        if self.postgres_url().is_some() || self.loaded.config.db.exists() {
            self.open_store().map(Some)
        } else {
            Ok(None)
        }
    }

    /// For commands that never write (`status`, `audit`, `packages`): the file is opened
    /// read-only, so they work on a read-only copy and cannot change a damaged file.
    fn readable_store(&self) -> Res<Option<Arc<dyn Store>>> {
        if self.postgres_url().is_some() {
            return self.open_store().map(Some);
        }
        if !self.loaded.config.db.exists() {
            return Ok(None);
        }
        Ok(Some(Arc::new(RedbStore::open_read_only(
            &self.loaded.config.db,
        )?)))
    }

    /// A listing when there is no state file yet: `[]` or a sentence.
    fn empty_listing(&self, what: &str, json: bool) -> i32 {
        if json {
            print_json(&Value::Array(Vec::new()));
        } else {
            eprintln!(
                "no {what} yet (no state file at {})",
                self.loaded.config.db.display()
            );
        }
        EXIT_OK
    }

    fn no_state(&self, what: &str) -> Failure {
        Failure::invalid(format!(
            "no {what}: there is no state file at {} yet",
            self.loaded.config.db.display()
        ))
    }

    /// The store `db` names: a redb state file (created when missing), or a PostgreSQL
    /// database (`postgres://…`, its schema brought up to date).
    fn open_store(&self) -> Res<Arc<dyn Store>> {
        if let Some(url) = self.postgres_url() {
            let lease = self.loaded.config.lease;
            return Ok(Arc::new(PgStore::open(url, lease)?));
        }
        Ok(Arc::new(RedbStore::open(&self.loaded.config.db)?))
    }

    /// An engine on `store`, with the data key from `LANDFALL_DATA_KEY` (secret inputs).
    fn engine(&self, store: Arc<dyn Store>) -> Res<Engine> {
        let key = rotate_key::data_key(None, "LANDFALL_DATA_KEY")?;
        Ok(Engine::new(Arc::clone(&self.registry), store).with_data_key(key))
    }

    /// Compiles a workflow; on errors prints the report and fails with exit 2.
    fn load_workflow(&self, path: &Path) -> Res<Workflow> {
        let source = read_source(path)?;
        self.compile_source(source)
    }

    fn compile_source(&self, source: Source) -> Res<Workflow> {
        let c = compile(&source, &self.registry);
        // Warnings are shown unless --quiet; errors always.
        let show = c.report.has_errors() || (!self.quiet() && !c.report.diagnostics.is_empty());
        if show {
            eprint!("{}", show::report(&c.report, show::stderr_color()));
        }
        c.workflow.ok_or(Failure::invalid(""))
    }
}
