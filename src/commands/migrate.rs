//! `migrate`: a store copied into an empty PostgreSQL database, every chain verified there.

use std::sync::Arc;

use landfall_engine::store::{
    is_postgres_url, redacted, verify_chain, Batch, PgStore, RedbStore, Store,
};
use serde_json::json;

use super::{print_json, App, Failure, Res, EXIT_FAILED, EXIT_OK};

impl App {
    pub(super) fn migrate(&self, from: &str, to: &str, json: bool) -> Res<i32> {
        if !is_postgres_url(to) {
            return Err(Failure::invalid(format!(
                "--to must be a PostgreSQL URL (postgres://user:password@host:port/db), not `{}`",
                redacted(to)
            )));
        }
        let source: Arc<dyn Store> = if is_postgres_url(from) {
            Arc::new(PgStore::open(from, self.loaded.config.lease)?)
        } else {
            let path = std::path::Path::new(from);
            if !path.exists() {
                return Err(Failure::invalid(format!("no state file at {from}")));
            }
            Arc::new(RedbStore::open_read_only(path)?)
        };
        let target = PgStore::open(to, self.loaded.config.lease)?;
        if !target.is_empty()? {
            return Err(Failure::invalid(format!(
                "{} already holds runs, packages, plans or secrets: migrate into an empty database (nothing was copied)",
                redacted(to)
            )));
        }
        let runs = source.runs()?;
        if let Some(live) = runs.iter().find(|r| source.is_live(&r.run_id)) {
            return Err(Failure::invalid(format!(
                "run `{}` is being executed on the source: stop it (Ctrl-C, or stop `serve`) and migrate again (nothing was copied)",
                live.run_id
            )));
        }
        let mut entries = 0;
        let mut broken = Vec::new();
        for run in &runs {
            let id = &run.run_id;
            let nodes = source.nodes(id)?;
            let mut signals = Vec::new();
            for n in &nodes {
                if let Some(s) = source.signal(id, &n.node_id)? {
                    signals.push((id.clone(), n.node_id.to_string(), s));
                }
            }
            let annotations = source
                .annotations(id)?
                .into_iter()
                .map(|(k, v)| (id.clone(), k, v))
                .collect();
            let audit = source.audit(id)?;
            target.import_audit(id, &audit)?;
            target.commit(Batch {
                runs: vec![run.clone()],
                nodes: vec![(
                    id.as_str().into(),
                    nodes.into_iter().map(Arc::new).collect(),
                )],
                signals,
                annotations,
                ..Batch::default()
            })?;
            let copied = target.audit(id)?;
            if copied != audit || verify_chain(&copied).is_some() {
                broken.push(id.clone());
            }
            entries += copied.len();
        }
        let packages = source.packages()?;
        for p in &packages {
            target.import_package(p)?;
        }
        let plans = source.plans()?;
        for p in &plans {
            target.save_plan(p)?;
        }
        let secrets = source.secrets()?;
        target.commit(Batch {
            secrets: secrets.clone(),
            ..Batch::default()
        })?;
        let summary = json!({
            "from": redacted(from),
            "to": redacted(to),
            "runs": runs.len(),
            "audit_entries": entries,
            "packages": packages.len(),
            "plans": plans.len(),
            "secrets": secrets.len(),
            "broken_chains": broken,
        });
        if json {
            print_json(&summary);
        } else if !self.quiet() {
            println!(
                "copied {} runs ({entries} audit entries), {} package versions, {} plans and {} secrets into {}",
                runs.len(),
                packages.len(),
                plans.len(),
                secrets.len(),
                redacted(to)
            );
        }
        if !broken.is_empty() {
            eprintln!(
                "error: the audit chain of {} did not verify after the copy",
                broken.join(", ")
            );
            return Ok(EXIT_FAILED);
        }
        if !json && !self.quiet() {
            println!(
                "every audit chain verifies in the target; set db = \"{}\" to use it",
                redacted(to)
            );
        }
        Ok(EXIT_OK)
    }
}
