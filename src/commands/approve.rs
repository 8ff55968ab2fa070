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
            groups: Vec::new(),
        };
        // A decision that would count for nothing is refused, not recorded: the person learns
        // it now instead of waiting for a run that will not move.
        if let Some(why) = request.refusal(&decision) {
            return Err(Failure::failed(format!(
                "your decision would not count, so nothing was recorded: {why}"
            )));
        }
        let actor = decision.actor.clone();
        self.engine(Arc::clone(&store))?.signal(
            &a.run_id,
            &a.node,
            decision.into_signal(chrono::Utc::now()),
        )?;
        let votes = approval::run_votes(store.as_ref(), &a.run_id).map_err(Failure::failed)?;
        let standing = request.progress(&votes);
        match verdict {
            // Until every ask is met, say what is recorded, never "approved".
            Verdict::Approve if standing != "approved" => println!(
                "{standing}: {} ({}) as {actor}",
                request.title,
                request.short_digest(),
            ),
            _ => println!(
                "{} {} ({}) as {actor}",
                verdict.past(),
                request.title,
                request.short_digest(),
            ),
        }
        Ok(EXIT_OK)
    }
}
