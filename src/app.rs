//! The commands. Each returns an exit code; errors that end a command early are
//! [`Failure`]s carrying their code, so `main` is the only place that exits.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use landfall_engine::compile::compile;
use landfall_engine::diag::{codes, Diagnostic, Report};
use landfall_engine::events::Observer;
use landfall_engine::inputs;
use landfall_engine::package::{Package, PackageRef};
use landfall_engine::source::{self, Source};
use landfall_engine::state::{NodeRecord, NodeStatus, RunRecord, RunStatus, Trigger};
use landfall_engine::store::{verify_chain, RedbStore, Store};
use landfall_engine::{Engine, EngineError, NewRun, Registry, RunControl, Workflow};
use serde_json::{json, Map, Value};

use crate::cli::{Cli, Command, ConfigCommand, GraphFormat, PackagesCommand, RunArgs};
use crate::config::{self, ConfigError, Flags, Loaded};
use crate::progress::Progress;
use crate::render;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_INVALID: i32 = 2;
pub const EXIT_ENV: i32 = 3;
pub const EXIT_INTERRUPTED: i32 = 130;

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
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Store(_) | EngineError::Busy(_) => EXIT_ENV,
            EngineError::Conflict { .. }
            | EngineError::BadRunId(_)
            | EngineError::Finished(..)
            | EngineError::Stale(..)
            | EngineError::Inputs(_)
            | EngineError::NoSuchRun(_)
            | EngineError::NoSuchNode(..)
            | EngineError::NodeFinished(..) => EXIT_INVALID,
        };
        Failure {
            code,
            message: e.to_string(),
        }
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
    let loaded = match config::load(
        cli.global.config.as_deref(),
        cli.global.env_name.as_deref(),
        flags,
    ) {
        Ok(l) => l,
        Err(ConfigError::File(r)) => {
            eprint!("{}", render::report(&r, render::stderr_color()));
            return EXIT_INVALID;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let app = App {
        cli_global: cli.global,
        registry: Arc::new(landfall_steps::registry(&landfall_steps::Settings {
            templates_dir: loaded.config.templates_dir.clone(),
        })),
        loaded,
    };
    let res = match cli.command {
        Command::Validate { files, json } => app.validate(&files, json),
        Command::Graph { file, format } => app.graph(&file, format),
        Command::Run(args) => app.run(args).await,
        Command::Resume { run_id, json } => app.resume(&run_id, json).await,
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
        Command::Approve(a) => app.decide(a, "approve"),
        Command::Reject(a) => app.decide(a, "reject"),
        Command::Steps { json } => app.steps(json),
        Command::Schema => {
            print_json(&landfall_engine::spec::json_schema());
            Ok(EXIT_OK)
        }
        Command::Config {
            command: ConfigCommand::Show { json },
        } => app.config_show(json),
        Command::Packages { command } => app.packages(command),
        Command::RotateKey {
            data_key_file,
            new_key_file,
        } => app.rotate_key(data_key_file.as_deref(), &new_key_file),
        Command::Render { requirements, out } => app.render(&requirements, &out),
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
    let name = path.display().to_string();
    std::fs::read_to_string(path)
        .map(|text| Source::new(name.clone(), text))
        .map_err(|e| Failure::invalid(format!("cannot read {name}: {e}")))
}

impl App {
    fn quiet(&self) -> bool {
        self.cli_global.quiet
    }

    /// For commands that only read: a missing state file means "nothing yet", and is not
    /// created.
    fn existing_store(&self) -> Res<Option<Arc<RedbStore>>> {
        if self.loaded.config.db.exists() {
            self.open_store().map(Some)
        } else {
            Ok(None)
        }
    }

    /// For commands that never write (`status`, `audit`, `packages`): the file is opened
    /// read-only, so they work on a read-only copy and cannot change a damaged file.
    fn readable_store(&self) -> Res<Option<Arc<RedbStore>>> {
        if !self.loaded.config.db.exists() {
            return Ok(None);
        }
        RedbStore::open_read_only(&self.loaded.config.db)
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| Failure::env(e.to_string()))
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

    fn open_store(&self) -> Res<Arc<RedbStore>> {
        RedbStore::open(&self.loaded.config.db)
            .map(Arc::new)
            .map_err(|e| Failure::env(e.to_string()))
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
            eprint!("{}", render::report(&c.report, render::stderr_color()));
        }
        c.workflow.ok_or(Failure {
            code: EXIT_INVALID,
            message: String::new(),
        })
    }

    fn validate(&self, files: &[PathBuf], json: bool) -> Res<i32> {
        let mut code = EXIT_OK;
        let mut reports = Vec::new();
        for f in files {
            let report = match read_source(f) {
                Ok(source) => compile(&source, &self.registry).report,
                Err(e) => Report::new(
                    Source::new(f.display().to_string(), ""),
                    None,
                    vec![Diagnostic::error(codes::IO, e.message)],
                ),
            };
            if report.has_errors() {
                code = EXIT_INVALID;
            }
            if json {
                reports.push(report.to_json());
            } else if !report.diagnostics.is_empty() {
                eprint!("{}", render::report(&report, render::stderr_color()));
            } else if !self.quiet() {
                eprintln!("{}: ok", report.source.name);
            }
        }
        if json {
            print_json(&Value::Array(reports));
        }
        Ok(code)
    }

    fn graph(&self, file: &Path, format: GraphFormat) -> Res<i32> {
        let wf = self.load_workflow(file)?;
        let text = match format {
            GraphFormat::Dot => wf.to_dot(),
            GraphFormat::Mermaid => wf.to_mermaid(),
        };
        print!("{text}");
        Ok(EXIT_OK)
    }

    fn read_inputs(&self, wf: &Workflow, args: &RunArgs) -> Res<Map<String, Value>> {
        let provided = match &args.input {
            None => Map::new(),
            Some(p) => {
                let source = read_source(p)?;
                let doc = match source::parse(&source) {
                    Ok((doc, _)) => doc,
                    Err(d) => {
                        let r = Report::new(source, None, vec![d]);
                        eprint!("{}", render::report(&r, render::stderr_color()));
                        return Err(Failure::invalid(""));
                    }
                };
                match doc.value {
                    Value::Object(m) => m,
                    Value::Null => Map::new(),
                    _ => {
                        return Err(Failure::invalid(format!(
                            "{}: an inputs file must be a mapping of input names to values",
                            source.name
                        )))
                    }
                }
            }
        };
        inputs::resolve_and_check(wf, &self.registry, provided, &args.sets).map_err(|errs| {
            for e in &errs {
                let code = if e.message.contains("missing") {
                    codes::INPUT_MISSING
                } else if e.message.contains("no such input") {
                    codes::INPUT_UNKNOWN
                } else {
                    codes::INPUT_INVALID
                };
                eprintln!("error[{code}]: input `{}`: {}", e.field, e.message);
            }
            Failure::invalid(format!(
                "{} invalid input{}; nothing ran",
                errs.len(),
                if errs.len() == 1 { "" } else { "s" }
            ))
        })
    }

    fn engine(&self, store: Arc<RedbStore>) -> Engine {
        Engine::new(Arc::clone(&self.registry), store)
    }

    async fn run(&self, args: RunArgs) -> Res<i32> {
        let wf = self.load_workflow(&args.file)?;
        let inputs = self.read_inputs(&wf, &args)?;
        let store = self.open_store()?;
        let engine = self.engine(Arc::clone(&store));
        let max_parallel = args
            .max_parallel
            .map(|n| n as usize)
            .or(wf.max_parallel)
            .unwrap_or(self.loaded.config.max_parallel);
        let record = engine.create_run(
            &wf,
            NewRun {
                run_id: args.run_id.clone(),
                inputs,
                trigger: cli_trigger(),
                max_parallel,
            },
        )?;
        if record.status.is_terminal() {
            // `--run-id` of a finished run: report it, do not run it again.
            if !self.quiet() {
                eprintln!(
                    "run {} already finished ({}); nothing to do",
                    record.run_id, record.status
                );
            }
            return self.finish_output(&store, &record.run_id, args.json);
        }
        self.execute(engine, store, Arc::new(wf), record, args.json)
            .await
    }

    async fn resume(&self, run_id: &str, json: bool) -> Res<i32> {
        let store = self
            .existing_store()?
            .ok_or_else(|| self.no_state(&format!("run `{run_id}`")))?;
        let record = store
            .run(run_id)
            .map_err(|e| Failure::env(e.to_string()))?
            .ok_or_else(|| {
                Failure::invalid(format!("no run `{run_id}` in {}", store.path().display()))
            })?;
        if record.status.is_terminal() {
            eprintln!(
                "run {run_id} already finished ({}); nothing to resume",
                record.status
            );
            return self.finish_output(&store, run_id, json);
        }
        let source = Source::new(record.workflow_file.clone(), record.workflow_text.clone());
        let wf = self.compile_source(source).map_err(|_| {
            Failure::from(EngineError::Stale(
                run_id.to_string(),
                "this build's plugins reject it (see above)".into(),
            ))
        })?;
        let engine = self.engine(Arc::clone(&store));
        self.execute(engine, store, Arc::new(wf), record, json)
            .await
    }

    async fn execute(
        &self,
        engine: Engine,
        store: Arc<RedbStore>,
        wf: Arc<Workflow>,
        record: RunRecord,
        json: bool,
    ) -> Res<i32> {
        let run_id = record.run_id.clone();
        let control = RunControl {
            grace: self.loaded.config.grace,
            ..RunControl::default()
        };
        let interrupt = control.interrupt.clone();
        let quiet = self.quiet();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            if !quiet {
                eprintln!("\nStopping: running steps may finish (Ctrl-C again to quit at once)…");
            }
            interrupt.cancel();
            wait_for_stop_signal().await;
            // Every transition is already durable: quitting now loses nothing that resume
            // cannot redo.
            std::process::exit(EXIT_INTERRUPTED);
        });
        let progress = Arc::new(Progress::new(
            std::io::stderr().is_terminal(),
            quiet,
            wf.steps.len(),
        ));
        if !quiet {
            eprintln!("Running {} as {run_id}", wf.name);
        }
        let mut observers: Vec<Arc<dyn Observer>> = vec![progress.clone()];
        let thread = self.slack_thread(&engine, &store, &wf, &record)?;
        if let Some(t) = &thread {
            observers.push(Arc::clone(t) as Arc<dyn Observer>);
        }
        let outcome = match engine.execute(wf, record, control, &observers).await {
            Err(EngineError::Finished(id, status)) => {
                // Another process finished it between our look and our lock.
                eprintln!("run {id} already finished ({status}); nothing to do");
                return self.finish_output(&store, &run_id, json);
            }
            other => other?,
        };
        progress.finish();
        if let Some(t) = thread {
            t.flush(std::time::Duration::from_secs(15)).await;
        }
        let code = match outcome.status {
            RunStatus::Succeeded => EXIT_OK,
            RunStatus::Interrupted => EXIT_INTERRUPTED,
            RunStatus::Failed | RunStatus::Cancelled => EXIT_FAILED,
            RunStatus::Running => EXIT_ENV,
        };
        if !quiet {
            let hint = if outcome.status == RunStatus::Interrupted {
                format!("; continue with `landfall resume {run_id}`")
            } else {
                String::new()
            };
            eprintln!("Run {run_id} {}{hint}", outcome.status);
        }
        self.finish_output(&store, &run_id, json).map(|_| code)
    }

    fn finish_output(&self, store: &Arc<RedbStore>, run_id: &str, json: bool) -> Res<i32> {
        if json {
            let doc = run_json(store.as_ref(), run_id, &self.registry)?;
            print_json(&doc);
        }
        let record = store.run(run_id).map_err(|e| Failure::env(e.to_string()))?;
        Ok(match record.map(|r| r.status) {
            Some(RunStatus::Succeeded) => EXIT_OK,
            Some(RunStatus::Interrupted) => EXIT_INTERRUPTED,
            _ => EXIT_FAILED,
        })
    }

    fn status(&self, run_id: Option<&str>, json: bool, limit: usize) -> Res<i32> {
        let Some(store) = self.readable_store()? else {
            if let Some(id) = run_id {
                return Err(self.no_state(&format!("run `{id}`")));
            }
            return Ok(self.empty_listing("runs", json));
        };
        if let Some(id) = run_id {
            let doc = run_json(store.as_ref(), id, &self.registry)?;
            if json {
                print_json(&doc);
            } else {
                print_run(&doc);
            }
            return Ok(EXIT_OK);
        }
        let runs = store.runs().map_err(|e| Failure::env(e.to_string()))?;
        let rows: Vec<Value> = runs
            .iter()
            .take(limit)
            .map(|r| {
                json!({
                    "run_id": r.run_id,
                    "workflow": r.workflow,
                    "status": effective_status(store.as_ref(), r),
                    "started_at": r.started_at,
                    "finished_at": r.finished_at,
                    "actor": r.trigger.actor,
                })
            })
            .collect();
        if json {
            print_json(&Value::Array(rows));
            return Ok(EXIT_OK);
        }
        if rows.is_empty() {
            eprintln!("no runs yet in {}", store.path().display());
            return Ok(EXIT_OK);
        }
        let mut out = String::new();
        out.push_str(&format!(
            "{:<30} {:<20} {:<12} {:<20} {:>9}  {}\n",
            "RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION", "ACTOR"
        ));
        for (r, row) in runs.iter().zip(&rows) {
            let dur = r
                .finished_at
                .map(|f| render::duration((f - r.started_at).num_milliseconds()))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<30} {:<20} {:<12} {:<20} {:>9}  {}\n",
                r.run_id,
                r.workflow,
                row["status"].as_str().unwrap_or_default(),
                r.started_at.format("%Y-%m-%d %H:%M:%S"),
                dur,
                r.trigger.actor
            ));
        }
        print!("{out}");
        Ok(EXIT_OK)
    }

    /// With a bot token, a CLI run talks in Slack too: in its own thread when it has one (a
    /// run started from Slack, resumed here), else in `slack.default_channel`.
    fn slack_thread(
        &self,
        engine: &Engine,
        store: &Arc<RedbStore>,
        wf: &Workflow,
        record: &RunRecord,
    ) -> Res<Option<Arc<crate::slack::thread::ThreadObserver>>> {
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        let Some(token) =
            env("SLACK_BOT_TOKEN").or_else(|| self.loaded.config.slack.bot_token.clone())
        else {
            return Ok(None);
        };
        let kept = store
            .annotations(&record.run_id)
            .ok()
            .and_then(|a| a.get("slack.thread").cloned())
            .and_then(|t| t["channel"].as_str().map(str::to_string));
        let Some(channel) = kept.or_else(|| self.loaded.config.slack.default_channel.clone())
        else {
            return Ok(None);
        };
        let url = self.slack_api_url();
        let chat = crate::slack::web::client(&url, crate::slack::web::Auth::Static(token))
            .map_err(|e| Failure::env(format!("cannot set up the Slack client: {e}")))?;
        Ok(Some(Arc::new(crate::slack::thread::start(
            Arc::from(chat),
            engine.clone(),
            record.run_id.clone(),
            wf.name.clone(),
            channel,
            record.trigger.actor.clone(),
        ))))
    }

    /// `landfall serve`: the Slack front door.
    async fn serve(&self, a: crate::cli::ServeArgs) -> Res<i32> {
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        let slack = &self.loaded.config.slack;
        let secret = env("SLACK_SIGNING_SECRET").or_else(|| slack.signing_secret.clone());
        let app_token = env("SLACK_APP_TOKEN").or_else(|| slack.app_token.clone());
        if a.socket_mode && app_token.is_none() {
            return Err(Failure::invalid(
                "--socket-mode needs an app-level token: set SLACK_APP_TOKEN (xapp-…; Slack app settings → Basic Information → App-Level Tokens, scope connections:write)",
            ));
        }
        if a.socket_mode
            && app_token
                .as_deref()
                .is_some_and(|t| !t.starts_with("xapp-"))
        {
            return Err(Failure::invalid(
                "SLACK_APP_TOKEN must be an app-level token (xapp-…), not a bot or user token",
            ));
        }
        if !a.socket_mode && secret.is_none() {
            return Err(Failure::invalid(
                "no Slack signing secret: set SLACK_SIGNING_SECRET (or slack.signing_secret in landfall.toml), or use --socket-mode",
            ));
        }
        let dir = a
            .workflows
            .clone()
            .unwrap_or_else(|| self.loaded.config.workflows_dir.clone());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Failure::invalid(format!("cannot read {}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml" | "yml" | "toml" | "json")
                )
            })
            .collect();
        files.sort();
        let mut workflows = Vec::new();
        for f in files {
            workflows.push((f.clone(), self.load_workflow(&f)?));
        }
        let store = self.open_store()?;
        let engine = self.engine(Arc::clone(&store) as Arc<RedbStore>);
        let union = |a: &[String], b: &[String]| {
            let mut v: Vec<String> = a.iter().chain(b).cloned().collect();
            v.sort();
            v.dedup();
            v
        };
        let allow_users = union(&a.allow_user, &slack.allow_users);
        let allow_channels = union(&a.allow_channel, &slack.allow_channels);
        let opts = crate::slack::server::Options {
            signing_secret: secret,
            allow_users: allow_users.clone(),
            allow_channels: allow_channels.clone(),
            max_body: a.max_body,
            max_parallel: self.loaded.config.max_parallel,
            grace: self.loaded.config.grace,
        };
        let api_url = self.slack_api_url();
        let token = env("SLACK_BOT_TOKEN").or_else(|| self.loaded.config.slack.bot_token.clone());
        // OAuth installs (token rotation) need the app's credentials and a data key to seal the
        // grant with.
        let oauth = match (env("SLACK_CLIENT_ID"), env("SLACK_CLIENT_SECRET")) {
            (Some(id), Some(secret)) => {
                let key = data_key(a.data_key_file.as_deref(), "data key")?.ok_or_else(|| {
                    Failure::invalid(
                        "OAuth installs need a data key to seal tokens with: set LANDFALL_DATA_KEY or --data-key-file (64 hex digits, e.g. `openssl rand -hex 32`)",
                    )
                })?;
                Some(crate::slack::server::OAuth {
                    client_id: id,
                    client_secret: secret,
                    key,
                    api_url: api_url.clone(),
                    authorize_url: env("SLACK_AUTHORIZE_URL")
                        .unwrap_or_else(|| "https://slack.com/oauth/v2/authorize".into()),
                    redirect_url: env("SLACK_REDIRECT_URL"),
                    scopes: "commands,chat:write,app_mentions:read,usergroups:read".into(),
                })
            }
            _ => None,
        };
        let auth = match (token, &oauth) {
            (Some(t), _) => Some(crate::slack::web::Auth::Static(t)),
            (None, Some(o)) => Some(crate::slack::web::Auth::Installed(
                crate::slack::web::InstalledAuth {
                    store: Arc::clone(&store) as Arc<dyn landfall_engine::store::Store>,
                    key: o.key.clone(),
                    client_id: o.client_id.clone(),
                    client_secret: o.client_secret.clone(),
                },
            )),
            (None, None) => {
                eprintln!("no SLACK_BOT_TOKEN: run threads are printed on the console");
                None
            }
        };
        let chat: crate::slack::server::Outbound = match auth {
            None => None,
            Some(auth) => Some(Arc::from(
                crate::slack::web::client(&api_url, auth)
                    .map_err(|e| Failure::env(format!("cannot set up the Slack client: {e}")))?,
            )),
        };
        let fd = crate::slack::server::FrontDoor::new(
            engine,
            Arc::clone(&self.registry),
            workflows,
            opts,
            chat,
            oauth,
        )
        .map_err(Failure::invalid)?;
        let (listener, addr) = crate::slack::server::bind(a.listen)
            .await
            .map_err(|e| Failure::env(format!("cannot listen on {}: {e}", a.listen)))?;
        let commands: Vec<String> = fd
            .routes()
            .iter()
            .map(|r| r.trigger.command.clone())
            .collect();
        eprintln!(
            "landfall serve: listening on http://{addr} (commands: {})",
            if commands.is_empty() {
                "none".to_string()
            } else {
                commands.join(", ")
            }
        );
        if allow_users.is_empty() && allow_channels.is_empty() {
            eprintln!("warning: no --allow-user or --allow-channel: nobody may start runs");
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let http = tokio::spawn(Arc::clone(&fd).serve(listener, stop.clone().cancelled_owned()));
        if let (true, Some(token)) = (a.socket_mode, &app_token) {
            let socket = crate::slack::socket::serve(
                &api_url,
                token,
                Arc::clone(&fd),
                wait_for_stop_signal(),
            )
            .await;
            stop.cancel();
            socket.map_err(|e| match e {
                crate::slack::socket::SocketError::NotAnAppToken => Failure::invalid(e.to_string()),
                _ => Failure::env(e.to_string()),
            })?;
        } else {
            wait_for_stop_signal().await;
            stop.cancel();
        }
        fd.drain().await;
        http.await
            .map_err(|e| Failure::env(format!("the server stopped: {e}")))?
            .map_err(|e| Failure::env(format!("the server stopped: {e}")))?;
        Ok(EXIT_OK)
    }

    /// Opens every sealed secret with the current key and seals it under the new one, in one
    /// commit: a secret that does not open stops everything before anything is written.
    fn rotate_key(&self, current: Option<&std::path::Path>, new: &std::path::Path) -> Res<i32> {
        let old = data_key(current, "current data key")?.ok_or_else(|| {
            Failure::invalid("no current data key: set LANDFALL_DATA_KEY or --data-key-file")
        })?;
        let new_key = data_key(Some(new), "new data key")?
            .ok_or_else(|| Failure::invalid("no new data key: give --new-key-file"))?;
        let store = self
            .existing_store()?
            .ok_or_else(|| self.no_state("secrets"))?;
        let mut resealed = Vec::new();
        let sealed_all = store.secrets().map_err(|e| Failure::env(e.to_string()))?;
        for (name, sealed) in sealed_all {
            let plain = old.open(&sealed, name.as_bytes()).map_err(|_| Failure {
                code: EXIT_FAILED,
                message: format!(
                    "secret `{name}` does not open with the current key (wrong key, or the secret was tampered with); nothing was changed"
                ),
            })?;
            resealed.push((name.clone(), new_key.seal(&plain, name.as_bytes())));
        }
        let names: Vec<String> = resealed.iter().map(|(n, _)| n.clone()).collect();
        let actor = cli_trigger().actor;
        store
            .commit(landfall_engine::store::Batch {
                secrets: resealed,
                audit: vec![landfall_engine::store::AuditDraft::new(
                    &actor,
                    "",
                    "data_key_rotated",
                    json!({ "secrets": names }),
                )
                .into()],
                ..Default::default()
            })
            .map_err(|e| Failure::env(e.to_string()))?;
        println!(
            "re-sealed {} secret(s) under the new key; from now on give Landfall the new key (LANDFALL_DATA_KEY or --data-key-file)",
            names.len()
        );
        Ok(EXIT_OK)
    }

    /// Slack's Web API: `SLACK_API_URL`, else `slack.api_url`, else Slack's own.
    fn slack_api_url(&self) -> String {
        std::env::var("SLACK_API_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| self.loaded.config.slack.api_url.clone())
            .unwrap_or_else(|| "https://slack.com/api".into())
    }

    /// Records a decision for a waiting `approval` step, bound to the digest it asked about.
    fn decide(&self, a: crate::cli::DecisionArgs, decision: &str) -> Res<i32> {
        let store = self
            .existing_store()?
            .ok_or_else(|| self.no_state(&format!("run `{}`", a.run_id)))?;
        let request =
            approval_request(store.as_ref(), &a.run_id, &a.node).map_err(Failure::invalid)?;
        let digest = request["digest"].as_str().unwrap_or_default().to_string();
        if let Some(want) = &a.digest {
            if want.is_empty() || !digest.starts_with(want.as_str()) {
                return Err(Failure {
                    code: EXIT_FAILED,
                    message: format!(
                        "the request is now for digest {digest}, not {want}: look again (landfall status {}) before deciding",
                        a.run_id
                    ),
                });
            }
        }
        let actor = cli_trigger().actor;
        let signal = landfall_engine::state::Signal {
            actor: actor.clone(),
            at: chrono::Utc::now(),
            value: json!({ "decision": decision, "digest": digest, "comment": a.comment }),
        };
        self.engine(Arc::clone(&store))
            .signal(&a.run_id, &a.node, signal)?;
        println!(
            "{} {} ({}) as {actor}",
            if decision == "approve" {
                "approved"
            } else {
                "rejected"
            },
            request["title"].as_str().unwrap_or_default(),
            digest.get(..12).unwrap_or(&digest),
        );
        Ok(EXIT_OK)
    }

    fn audit(&self, run_id: &str, verify: bool, json: bool) -> Res<i32> {
        let store = self
            .readable_store()?
            .ok_or_else(|| self.no_state(&format!("run `{run_id}`")))?;
        // `-`: the entries that belong to no run (refused Slack requests, …).
        let run_id = if run_id == "-" { "" } else { run_id };
        if !run_id.is_empty()
            && store
                .run(run_id)
                .map_err(|e| Failure::env(e.to_string()))?
                .is_none()
        {
            return Err(Failure::invalid(format!("no run `{run_id}`")));
        }
        let entries = store
            .audit(run_id)
            .map_err(|e| Failure::env(e.to_string()))?;
        if verify {
            let broken = verify_chain(&entries);
            if json {
                print_json(&json!({
                    "run_id": run_id,
                    "entries": entries.len(),
                    "intact": broken.is_none(),
                    "first_broken": broken,
                }));
            } else {
                match &broken {
                    None => println!(
                        "audit chain of {run_id} is intact: {} entries",
                        entries.len()
                    ),
                    Some(b) => println!(
                        "audit chain of {run_id} is BROKEN at entry #{}: {}",
                        b.seq, b.reason
                    ),
                }
            }
            return Ok(if broken.is_none() {
                EXIT_OK
            } else {
                EXIT_FAILED
            });
        }
        if json {
            print_json(&serde_json::to_value(&entries).unwrap_or_default());
            return Ok(EXIT_OK);
        }
        let mut out = String::new();
        for e in &entries {
            let d = &e.draft;
            out.push_str(&format!(
                "#{:<4} {}  {:<18} {:<22} {:<16} {}\n",
                e.seq,
                d.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                d.actor,
                d.kind,
                d.node.as_deref().unwrap_or("-"),
                if d.details.is_null() {
                    String::new()
                } else {
                    d.details.to_string()
                }
            ));
        }
        print!("{out}");
        Ok(EXIT_OK)
    }

    fn steps(&self, json: bool) -> Res<i32> {
        let infos = self.registry.infos();
        if json {
            print_json(&serde_json::to_value(&infos).unwrap_or_default());
            return Ok(EXIT_OK);
        }
        let mut out = String::new();
        for info in infos {
            out.push_str(&format!("{}\n    {}\n", info.name, info.summary));
            // A plugin whose `with` has variants (`action: publish | fetch`) lists each.
            let variants: Vec<&Value> = match info.schema["oneOf"].as_array() {
                Some(v) => v.iter().collect(),
                None => vec![&info.schema],
            };
            for variant in variants {
                let required: Vec<&str> = variant["required"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if info.schema["oneOf"].is_array() {
                    if let Some(doc) = variant["description"].as_str() {
                        out.push_str(&format!("    — {}\n", doc.replace('\n', " ")));
                    }
                }
                for (name, p) in variant["properties"].as_object().into_iter().flatten() {
                    let ty = match p["const"].as_str().or_else(|| p["enum"][0].as_str()) {
                        Some(c) => format!("{c:?}"),
                        None => schema_type(&info.schema, p),
                    };
                    let req = if required.contains(&name.as_str()) {
                        " (required)"
                    } else {
                        ""
                    };
                    let desc = p["description"].as_str().unwrap_or("").replace('\n', " ");
                    out.push_str(&format!("    with.{name}: {ty}{req}  {desc}\n"));
                }
            }
            out.push('\n');
        }
        print!("{out}");
        Ok(EXIT_OK)
    }

    fn package(&self, store: &RedbStore, reference: &str) -> Res<Package> {
        let r: PackageRef = reference.parse().map_err(Failure::invalid)?;
        match store.package(&r.id, r.version) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(Failure::invalid(format!("no package {r}"))),
            // A corrupt package is the state file's problem, not the user's input.
            Err(e) => Err(Failure::env(e.to_string())),
        }
    }

    fn render(&self, requirements: &Path, out: &Path) -> Res<i32> {
        use landfall_steps::requirements::Requirements;
        let source = read_source(requirements)?;
        let doc = match source::parse(&source) {
            Ok((doc, _)) => doc,
            Err(d) => {
                let r = Report::new(source, None, vec![d]);
                eprint!("{}", render::report(&r, render::stderr_color()));
                return Err(Failure::invalid(""));
            }
        };
        let map = doc.value.as_object().cloned().ok_or_else(|| {
            Failure::invalid(format!("{}: requirements must be a mapping", source.name))
        })?;
        let templates = &self.loaded.config.templates_dir;
        let req =
            Requirements::from_inputs(&map, Some(&templates.join("rules"))).map_err(|errs| {
                for e in &errs {
                    eprintln!("error[{}]: {}: {e}", codes::INPUT_INVALID, source.name);
                }
                Failure::invalid(format!(
                    "{} problem(s) in {}; nothing rendered",
                    errs.len(),
                    source.name
                ))
            })?;
        let built = landfall_steps::cfn::build::build(templates, &req, None, None)
            .map_err(|e| Failure::invalid(e.message))?;
        let scps = landfall_steps::aws::policy::render(
            templates,
            &serde_json::from_value(json!({
                "customer": req.customer,
                "target_id": "(the customer's OU)",
                "regions": req.regions,
            }))
            .map_err(|e| Failure::invalid(e.to_string()))?,
        )
        .map_err(|e| Failure::invalid(e.message))?;
        let packs: Vec<std::path::PathBuf> = req
            .compliance
            .iter()
            .map(|p| templates.join("rules").join(p))
            .collect();
        let findings =
            landfall_steps::cfn::validate::check_package(&built.files, &built.manifest, &packs);
        let mut files = built.files.clone();
        for s in &scps {
            let pretty = serde_json::to_string_pretty(&s.document).unwrap_or_default();
            files.insert(format!("scp/{}.json", s.name), pretty + "\n");
        }
        let pkg = Package {
            id: built.package_id.clone(),
            version: 0,
            digest: String::new(),
            created_at: chrono::Utc::now(),
            run_id: None,
            content: landfall_engine::package::PackageContent {
                manifest: built.manifest.clone(),
                files,
            },
        };
        export_package(&pkg, out)?;
        if !self.quiet() {
            eprintln!(
                "rendered {} ({} stacks, {} SCPs) into {}",
                built.package_id,
                built.files.len(),
                scps.len(),
                out.display()
            );
        }
        for f in &findings {
            eprintln!(
                "{}: {} in {}{}: {}\n  fix: {}",
                match f.severity {
                    landfall_steps::cfn::validate::Severity::Error => "error",
                    landfall_steps::cfn::validate::Severity::Warning => "warning",
                },
                f.rule,
                f.stack,
                f.resource
                    .as_deref()
                    .map(|r| format!("/{r}"))
                    .unwrap_or_default(),
                f.message,
                f.fix
            );
        }
        let errors = findings
            .iter()
            .filter(|f| f.severity == landfall_steps::cfn::validate::Severity::Error)
            .count();
        if errors > 0 {
            eprintln!("the package has {errors} error finding(s): it would be rejected");
            return Ok(EXIT_FAILED);
        }
        if !self.quiet() {
            eprintln!(
                "validation passed (structure, parameters, limits, rule packs: {})",
                req.compliance.join(", ")
            );
        }
        Ok(EXIT_OK)
    }

    fn packages(&self, command: PackagesCommand) -> Res<i32> {
        let Some(store) = self.readable_store()? else {
            if let PackagesCommand::List { json } = command {
                return Ok(self.empty_listing("packages", json));
            }
            return Err(self.no_state("package"));
        };
        match command {
            PackagesCommand::List { json } => {
                let mut all = store.packages().map_err(|e| Failure::env(e.to_string()))?;
                all.sort_by(|a, b| {
                    b.created_at
                        .cmp(&a.created_at)
                        .then(b.version.cmp(&a.version))
                });
                let rows: Vec<Value> = all
                    .iter()
                    .map(|p| {
                        json!({
                            "id": p.id, "version": p.version, "digest": p.digest,
                            "created_at": p.created_at, "run_id": p.run_id,
                            "files": p.content.files.len(),
                        })
                    })
                    .collect();
                if json {
                    print_json(&Value::Array(rows));
                } else if all.is_empty() {
                    eprintln!("no packages yet in {}", store.path().display());
                } else {
                    let mut out = format!(
                        "{:<32} {:>7}  {:<14} {:<20} {}\n",
                        "PACKAGE", "VERSION", "DIGEST", "CREATED", "FILES"
                    );
                    for p in &all {
                        out.push_str(&format!(
                            "{:<32} {:>7}  {:<14} {:<20} {}\n",
                            p.id,
                            p.version,
                            &p.digest[..12.min(p.digest.len())],
                            p.created_at.format("%Y-%m-%d %H:%M:%S"),
                            p.content.files.len()
                        ));
                    }
                    print!("{out}");
                }
                Ok(EXIT_OK)
            }
            PackagesCommand::Show { reference, json } => {
                let p = self.package(&store, &reference)?;
                if json {
                    print_json(&serde_json::to_value(&p).unwrap_or_default());
                } else {
                    let mut out = format!(
                        "{}@{}  digest {}  created {}\n\nmanifest:\n{}\n",
                        p.id,
                        p.version,
                        p.digest,
                        p.created_at,
                        serde_json::to_string_pretty(&p.content.manifest).unwrap_or_default()
                    );
                    for (path, text) in &p.content.files {
                        out.push_str(&format!("\n--- {path} ({} bytes)\n", text.len()));
                    }
                    print!("{out}");
                }
                Ok(EXIT_OK)
            }
            PackagesCommand::Export { reference, dir } => {
                let p = self.package(&store, &reference)?;
                export_package(&p, &dir)?;
                if !self.quiet() {
                    eprintln!(
                        "wrote {} files and manifest.json to {}",
                        p.content.files.len(),
                        dir.display()
                    );
                }
                Ok(EXIT_OK)
            }
            PackagesCommand::Diff { a, b } => {
                let pa = self.package(&store, &a)?;
                let pb = self.package(&store, &b)?;
                let text = diff_packages(&pa, &pb);
                print!("{text}");
                Ok(if text.is_empty() {
                    EXIT_OK
                } else {
                    EXIT_FAILED
                })
            }
        }
    }

    fn config_show(&self, json: bool) -> Res<i32> {
        let settings = self.loaded.settings();
        if json {
            print_json(&serde_json::to_value(&settings).unwrap_or_default());
            return Ok(EXIT_OK);
        }
        let mut out = String::new();
        for s in settings {
            out.push_str(&format!(
                "{:<24} = {:<40} # {}\n",
                s.key,
                s.value.to_string(),
                s.source
            ));
        }
        print!("{out}");
        Ok(EXIT_OK)
    }
}

fn schema_type(root: &Value, p: &Value) -> String {
    if let Some(t) = p["type"].as_str() {
        if t == "array" {
            return format!("list of {}", schema_type(root, &p["items"]));
        }
        return t.to_string();
    }
    if let Some(ts) = p["type"].as_array() {
        let names: Vec<&str> = ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect();
        return names.join("|");
    }
    if let Some(r) = p["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        let target = &root["$defs"][name];
        if let Some(e) = target["enum"].as_array() {
            return e
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("|");
        }
        if let Some(one) = target["oneOf"].as_array() {
            let names: Vec<String> = one
                .iter()
                .filter_map(|x| {
                    x["const"]
                        .as_str()
                        .or_else(|| x["enum"][0].as_str())
                        .map(str::to_string)
                })
                .collect();
            if !names.is_empty() {
                return names.join("|");
            }
        }
        return name.to_string();
    }
    if let Some(any) = p["anyOf"].as_array() {
        let names: Vec<String> = any
            .iter()
            .filter(|x| x["type"].as_str() != Some("null"))
            .map(|x| schema_type(root, x))
            .collect();
        return names.join("|");
    }
    "any".into()
}

/// The latest approval request of a node (its `approval_requested` milestone), or why there
/// is none.
pub fn approval_request(
    store: &dyn landfall_engine::store::Store,
    run_id: &str,
    node: &str,
) -> Result<Value, String> {
    let entries = store.audit(run_id).map_err(|e| e.to_string())?;
    if entries.is_empty() {
        return Err(format!("no run `{run_id}`"));
    }
    entries
        .iter()
        .rev()
        .find(|e| {
            e.draft.kind == "milestone"
                && e.draft.node.as_deref() == Some(node)
                && e.draft.details["kind"] == "approval_requested"
        })
        .map(|e| e.draft.details["data"].clone())
        .ok_or_else(|| format!("node `{node}` of run `{run_id}` has not asked for an approval"))
}

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

/// The data key from `file` (a flag, so it wins) or `LANDFALL_DATA_KEY`; `None` if neither
/// is given. `what` names the key in errors.
fn data_key(
    file: Option<&std::path::Path>,
    what: &str,
) -> Res<Option<landfall_engine::crypto::DataKey>> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| Failure::invalid(format!("cannot read {what} {}: {e}", f.display())))?,
        None => match std::env::var("LANDFALL_DATA_KEY")
            .ok()
            .filter(|s| !s.is_empty())
        {
            Some(k) => k,
            None => return Ok(None),
        },
    };
    landfall_engine::crypto::DataKey::from_hex(&text)
        .map(Some)
        .map_err(|e| Failure::invalid(format!("{what}: {e}")))
}

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

/// A run whose record says running but that no live process holds was interrupted.
fn effective_status(store: &dyn Store, r: &RunRecord) -> RunStatus {
    if r.status == RunStatus::Running && !store.is_live(&r.run_id) {
        RunStatus::Interrupted
    } else {
        r.status
    }
}

/// The documented `status RUN --json` / `run --json` shape.
pub fn run_json(store: &dyn Store, run_id: &str, registry: &Registry) -> Res<Value> {
    let run = store
        .run(run_id)
        .map_err(|e| Failure::env(e.to_string()))?
        .ok_or_else(|| Failure::invalid(format!("no run `{run_id}`")))?;
    let nodes = store
        .nodes(run_id)
        .map_err(|e| Failure::env(e.to_string()))?;
    let source = Source::new(run.workflow_file.clone(), run.workflow_text.clone());
    let wf = compile(&source, registry).workflow;
    let order: Vec<String> = wf
        .as_ref()
        .map(|wf| wf.order.iter().map(|&i| wf.steps[i].id.clone()).collect())
        .unwrap_or_default();
    // Secret inputs never leave the state file; without the workflow, hide them all.
    let inputs = match &wf {
        Some(wf) => inputs::redacted(&wf.inputs, &run.inputs),
        None => Value::String("(hidden: the stored workflow no longer compiles)".into()),
    };
    let mut list: Vec<&NodeRecord> = nodes.iter().collect();
    let pos = |step: &str| order.iter().position(|s| s == step).unwrap_or(usize::MAX);
    list.sort_by_key(|n| (pos(&n.step_id), n.index.unwrap_or(0)));
    let mut out: Vec<Value> = list.iter().map(|n| node_json(n)).collect();
    for step in &order {
        if !nodes.iter().any(|n| *n.step_id == **step) {
            out.push(json!({ "id": step, "status": NodeStatus::Pending, "attempts": 0, "started_at": null, "finished_at": null, "outputs": null, "error": null }));
        }
    }
    Ok(json!({
        "run_id": run.run_id,
        "workflow": run.workflow,
        "status": effective_status(store, &run),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "actor": run.trigger.actor,
        "inputs": inputs,
        "nodes": out,
    }))
}

fn node_json(n: &NodeRecord) -> Value {
    let mut v = json!({
        "id": n.node_id,
        "status": n.status,
        "attempts": n.attempts,
        "started_at": n.started_at,
        "finished_at": n.finished_at,
        "outputs": n.outputs,
        "error": n.error.as_ref().map(|e| json!({ "class": e.class, "message": e.message })),
    });
    if let Some(r) = n.skip_reason {
        v["skip_reason"] = json!(r);
    }
    v
}

fn print_run(doc: &Value) {
    let mut out = format!(
        "run {}  workflow {}  status {}  actor {}\n",
        doc["run_id"].as_str().unwrap_or_default(),
        doc["workflow"].as_str().unwrap_or_default(),
        doc["status"].as_str().unwrap_or_default(),
        doc["actor"].as_str().unwrap_or_default(),
    );
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let err = n["error"]["message"]
            .as_str()
            .map(|m| format!("  {m}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<28} {:<10} attempts {}{err}\n",
            n["id"].as_str().unwrap_or_default(),
            n["status"].as_str().unwrap_or_default(),
            n["attempts"]
        ));
    }
    print!("{out}");
}

/// Writes a package's files under `dir`, refusing any path that would leave it.
fn export_package(p: &Package, dir: &Path) -> Res<()> {
    use std::path::Component;
    for path in p.content.files.keys() {
        let rel = Path::new(path);
        if path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(Failure::env(format!(
                "package {}@{} names a file outside its directory: {path:?}",
                p.id, p.version
            )));
        }
    }
    let io = |e: std::io::Error| Failure::env(format!("cannot write to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    for (path, text) in &p.content.files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&target, text).map_err(io)?;
    }
    let manifest = serde_json::to_string_pretty(&p.content.manifest).unwrap_or_default();
    std::fs::write(dir.join("manifest.json"), manifest + "\n").map_err(io)?;
    Ok(())
}

/// A unified diff of the manifests and of every file; empty when identical.
pub fn diff_packages(a: &Package, b: &Package) -> String {
    let name = |p: &Package, f: &str| format!("{}@{}/{f}", p.id, p.version);
    let mut out = String::new();
    let mut one = |path: &str, x: &str, y: &str| {
        if x != y {
            let d = similar::TextDiff::from_lines(x, y);
            out.push_str(
                &d.unified_diff()
                    .context_radius(3)
                    .header(&name(a, path), &name(b, path))
                    .to_string(),
            );
        }
    };
    let ma = serde_json::to_string_pretty(&a.content.manifest).unwrap_or_default() + "\n";
    let mb = serde_json::to_string_pretty(&b.content.manifest).unwrap_or_default() + "\n";
    one("manifest.json", &ma, &mb);
    let paths: std::collections::BTreeSet<&String> = a
        .content
        .files
        .keys()
        .chain(b.content.files.keys())
        .collect();
    for p in paths {
        let x = a.content.files.get(p).map(String::as_str).unwrap_or("");
        let y = b.content.files.get(p).map(String::as_str).unwrap_or("");
        one(p, x, y);
    }
    out
}
