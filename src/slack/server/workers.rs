//! `serve` workers sharing a PostgreSQL store: the runs a worker takes (new ones, ones a
//! stopping worker interrupted, ones whose worker died), and cancellations asked of one
//! worker for a run another executes.

use std::sync::Arc;

use landfall_engine::{RunControl, Source};

use super::FrontDoor;

/// The annotation by which a worker asks the worker executing a run to cancel it.
pub(super) const CANCEL_REQUESTED: &str = "cancel.requested";

/// How many runs a worker takes in one look (the others are left for other workers).
const PICK_UP_AT_ONCE: usize = 8;

impl FrontDoor {
    /// On a store whose work is shared (`serve` workers on PostgreSQL): takes the runs no
    /// worker executes — new ones, ones a stopping worker interrupted, ones whose worker
    /// died (its lease expired) — and executes them here, until `stop`. Looks every `every`,
    /// and at once when this worker created a run.
    pub async fn pick_up(
        self: Arc<Self>,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if !self.store.shares_work() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = self.created.notified() => {}
            }
            self.cancel_requested().await;
            let store = Arc::clone(&self.store);
            let taken =
                tokio::task::spawn_blocking(move || store.take_runs("slack", PICK_UP_AT_ONCE))
                    .await;
            let runs = match taken {
                Ok(Ok(runs)) => runs,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot look for runs to take");
                    continue;
                }
                Err(_) => continue,
            };
            for run in runs {
                if stop.is_cancelled() {
                    // Given back: another worker takes it.
                    let _ = self.store.lease(&run);
                    continue;
                }
                self.take_over(&run);
            }
        }
    }

    /// Cancels the runs this worker executes that another worker was asked to cancel.
    async fn cancel_requested(self: &Arc<Self>) {
        let live: Vec<(String, RunControl)> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (run, control) in live {
            if control.cancel.is_cancelled() {
                continue;
            }
            let store = Arc::clone(&self.store);
            let r = run.clone();
            let asked = tokio::task::spawn_blocking(move || store.annotations(&r)).await;
            if let Ok(Ok(a)) = asked {
                if a.contains_key(CANCEL_REQUESTED) {
                    tracing::info!(run, "cancelled at another worker's request");
                    control.cancel.cancel();
                }
            }
        }
    }

    /// A run [`FrontDoor::pick_up`] took (its lease held for it): executed here, its
    /// thread continued in its channel.
    fn take_over(self: &Arc<Self>, run: &str) {
        let record = match self.store.run(run) {
            Ok(Some(r)) if !r.status.is_terminal() => r,
            other => {
                if let Err(e) = other {
                    tracing::warn!(run, error = %e, "cannot read a run taken over");
                }
                let _ = self.store.lease(run);
                return;
            }
        };
        let source = Source::new(record.workflow_file.clone(), record.workflow_text.clone());
        let Some(wf) = landfall_engine::compile(&source, &self.registry).workflow else {
            tracing::error!(
                run,
                "a run's workflow no longer compiles with this build; left for another worker"
            );
            let _ = self.store.lease(run);
            return;
        };
        let channel = record.trigger.details["channel"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        tracing::info!(run, status = %record.status, "taking a run over");
        self.spawn(Arc::new(wf), record, channel);
    }
}
