//! `approve` and `reject`: a decision for a waiting `approval` step, bound to the digest it
//! asked about (the contract is `landfall_steps::approval`).

use std::sync::Arc;

use landfall_steps::approval::{self, Decision, Verdict};

use super::{cli_trigger, App, Failure, Res, EXIT_OK};
use crate::cli::DecisionArgs;

impl App {
    /// Records a decision for a waiting `approval` step, bound to the digest it asked about.
    pub(super) fn decide(&self, a: DecisionArgs, verdict: Verdict) -> Res<i32> {
        let store = self
            .existing_store()?
            .ok_or_else(|| self.no_state(&format!("run `{}`", a.run_id)))?;
        let request =
            approval::pending(store.as_ref(), &a.run_id, &a.node).map_err(Failure::invalid)?;
        if let Some(want) = &a.digest {
            if want.is_empty() || !request.digest.starts_with(want.as_str()) {
                return Err(Failure::failed(format!(
                    "the request is now for digest {}, not {want}: look again (landfall status {}) before deciding",
                    request.digest, a.run_id
                )));
            }
        }
        let decision = Decision {
            verdict,
            digest: request.digest.clone(),
            comment: a.comment.clone(),
            actor: cli_trigger().actor,
        };
        let actor = decision.actor.clone();
        self.engine(Arc::clone(&store)).signal(
            &a.run_id,
            &a.node,
            decision.into_signal(chrono::Utc::now()),
        )?;
        println!(
            "{} {} ({}) as {actor}",
            verdict.past(),
            request.title,
            request.short_digest(),
        );
        Ok(EXIT_OK)
    }
}
