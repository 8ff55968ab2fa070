//! `run` and `resume`: execute a run in this process, with progress on the console and, with
//! a bot token, its Slack thread.

use std::io::IsTerminal;
use std::sync::Arc;

use landfall_engine::diag::Report;
use landfall_engine::Observer;

use landfall_engine::state::{RunRecord, RunStatus};
use landfall_engine::store::Store;
use landfall_engine::{parse_document, Source};
use landfall_engine::{Engine, EngineError, NewRun, RunControl, Workflow};
use serde_json::{Map, Value};

use super::{
    cli_trigger, exit_code, print_json, read_source, run_json, wait_for_stop_signal, App, Failure,
    Res, EXIT_INTERRUPTED,
};
use crate::cli::RunArgs;
use crate::progress::Progress;
use crate::render;

impl App {
    /// The workflow's inputs from an inputs file and `--set`s, checked: every problem named.
    pub(super) fn read_inputs(
        &self,
        wf: &Workflow,
        input: Option<&std::path::Path>,
        sets: &[(String, String)],
    ) -> Res<Map<String, Value>> {
        let mut file = None;
        let provided = match input {
            None => Map::new(),
            Some(p) => {
                let source = read_source(p)?;
                let doc = match parse_document(&source) {
                    Ok((doc, _)) => doc,
                    Err(d) => {
                        let r = Report::new(source, None, vec![d]);
                        eprint!("{}", render::report(&r, render::stderr_color()));
                        return Err(Failure::invalid(""));
                    }
                };
                let provided = match &doc.value {
                    Value::Object(m) => m.clone(),
                    Value::Null => Map::new(),
                    _ => {
                        return Err(Failure::invalid(format!(
                            "{}: an inputs file must be a mapping of input names to values",
                            source.name
                        )))
                    }
                };
                file = Some(doc);
                provided
            }
        };
        landfall_engine::resolve_and_check(wf, &self.registry, provided, sets).map_err(|errs| {
            // A `--set` wins over the file: its problems are not the file's.
            let from_sets: Vec<&str> = sets.iter().map(|(k, _)| k.as_str()).collect();
            let (set_errs, rest): (Vec<_>, Vec<_>) = errs.iter().cloned().partition(|e| {
                from_sets.iter().any(|k| {
                    e.field == *k
                        || e.field.starts_with(&format!("{k}."))
                        || e.field.starts_with(&format!("{k}["))
                })
            });
            eprint!(
                "{}{}",
                render::input_problems(file.as_ref(), &rest, render::stderr_color()),
                render::input_errors(&set_errs)
            );
            Failure::invalid(format!(
                "{} invalid input{}; nothing ran",
                errs.len(),
                if errs.len() == 1 { "" } else { "s" }
            ))
        })
    }

    pub(super) async fn run(&self, args: RunArgs) -> Res<i32> {
        let wf = self.load_workflow(&args.file)?;
        let inputs = match args.plan {
            // The plan holds its inputs (checked when the run is created).
            Some(_) => Map::new(),
            None => self.read_inputs(&wf, args.input.as_deref(), &args.sets)?,
        };
        let store = self.open_store()?;
        let engine = self.engine(Arc::clone(&store))?;
        let max_parallel = args
            .max_parallel
            .map(|n| n as usize)
            .or(wf.max_parallel)
            .unwrap_or(self.loaded.config.max_parallel);
        let record = engine.create_run(
            &wf,
            NewRun {
                run_id: args.run_id.clone(),
                plan: args.plan.clone(),
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

    pub(super) async fn resume(&self, run_id: &str, json: bool) -> Res<i32> {
        let store = self
            .existing_store()?
            .ok_or_else(|| self.no_state(&format!("run `{run_id}`")))?;
        let record = store
            .run(run_id)?
            .ok_or_else(|| Failure::invalid(format!("no run `{run_id}` in {}", self.db_shown())))?;
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
        let engine = self.engine(Arc::clone(&store))?;
        self.execute(engine, store, Arc::new(wf), record, json)
            .await
    }

    pub(super) async fn redrive(&self, run_id: &str, from: Option<&str>, json: bool) -> Res<i32> {
        let store = self
            .existing_store()?
            .ok_or_else(|| self.no_state(&format!("run `{run_id}`")))?;
        let record = store
            .run(run_id)?
            .ok_or_else(|| Failure::invalid(format!("no run `{run_id}` in {}", self.db_shown())))?;
        let source = Source::new(record.workflow_file.clone(), record.workflow_text.clone());
        let wf = self.compile_source(source).map_err(|_| {
            Failure::from(EngineError::Stale(
                run_id.to_string(),
                "this build's plugins reject it (see above)".into(),
            ))
        })?;
        let engine = self.engine(Arc::clone(&store))?;
        let redrive = engine.redrive(&wf, run_id, from, &super::cli_trigger().actor)?;
        if !self.quiet() {
            let mut what: Vec<String> = redrive.reset.clone();
            what.extend(redrive.steps.iter().map(|s| format!("{s} (anew)")));
            eprintln!(
                "redrive {} of run {run_id}: {}",
                redrive.number,
                what.join(", ")
            );
        }
        self.execute(engine, store, Arc::new(wf), redrive.run, json)
            .await
    }

    pub(super) async fn execute(
        &self,
        engine: Engine,
        store: Arc<dyn Store>,
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
        // With a bot token, a CLI run talks in Slack too.
        let thread = crate::slack::setup::cli_thread(
            &self.loaded.config.slack,
            &engine,
            store.as_ref(),
            &wf.name,
            &record,
        )
        .map_err(|e| Failure::env(e.to_string()))?;
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
        if !quiet {
            let hint = if outcome.status == RunStatus::Interrupted {
                format!("; continue with `landfall resume {run_id}`")
            } else {
                String::new()
            };
            eprintln!("Run {run_id} {}{hint}", outcome.status);
        }
        if json {
            print_json(&run_json(store.as_ref(), &run_id, &self.registry)?);
        }
        Ok(exit_code(outcome.status))
    }

    /// What a run that ended (here or elsewhere) prints with `--json`, and its exit code.
    pub(super) fn finish_output(
        &self,
        store: &Arc<dyn Store>,
        run_id: &str,
        json: bool,
    ) -> Res<i32> {
        if json {
            print_json(&run_json(store.as_ref(), run_id, &self.registry)?);
        }
        let status = store
            .run(run_id)?
            .map(|r| r.status)
            .ok_or_else(|| Failure::env(format!("run `{run_id}` vanished from the state file")))?;
        Ok(exit_code(status))
    }
}
