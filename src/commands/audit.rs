//! `audit`: a run's audit trail, or the verification of its hash chain.

use landfall_engine::store::verify_chain;
use serde_json::json;

use super::{print_json, App, Failure, Res, EXIT_FAILED, EXIT_OK};

impl App {
    pub(super) fn audit(&self, run_id: &str, verify: bool, json: bool) -> Res<i32> {
        let store = self
            .readable_store()?
            .ok_or_else(|| self.no_state(&format!("run `{run_id}`")))?;
        // `-`: the entries that belong to no run (refused Slack requests, …).
        let run_id = if run_id == "-" { "" } else { run_id };
        if !run_id.is_empty() && store.run(run_id)?.is_none() {
            return Err(Failure::invalid(format!("no run `{run_id}`")));
        }
        let entries = store.audit(run_id)?;
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
}
