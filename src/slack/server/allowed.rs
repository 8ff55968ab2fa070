//! Who may act on a workflow or a run beyond the server's allowlist: a workflow's own
//! `allowed_users` / `allowed_channels` / `allowed_groups` (groups listed by Slack, cached).

use landfall_engine::{SlackTrigger, Source};

use super::{FrontDoor, GROUP_LOOKUP, GROUP_TTL};

impl FrontDoor {
    /// Whether `user` belongs to one of `groups`. Membership comes from Slack
    /// (`usergroups.users.list`, cached for a minute); when it cannot be had, the answer is
    /// an error to show, never a guess.
    pub(super) async fn in_groups(&self, user: &str, groups: &[String]) -> Result<bool, String> {
        if groups.is_empty() {
            return Ok(false);
        }
        let Some(chat) = &self.chat else {
            return Err("group membership cannot be checked without a Slack bot token".into());
        };
        for g in groups {
            // The cache's lock is never held across the call to Slack: a slow or throttled
            // answer for one group must not hold up every other request.
            let fresh = self
                .groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(g)
                .filter(|(at, _)| at.elapsed() < GROUP_TTL)
                .map(|(_, m)| m.clone());
            let members = match fresh {
                Some(m) => m,
                None => {
                    let m = tokio::time::timeout(GROUP_LOOKUP, chat.group_members(g))
                        .await
                        .map_err(|_| format!("Slack did not list group {g} in time"))
                        .and_then(|r| {
                            r.map_err(|e| {
                                tracing::warn!(group = %g, error = %e, "cannot list a user group");
                                format!("cannot check membership of group {g}")
                            })
                        })?;
                    self.groups
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(g.clone(), (std::time::Instant::now(), m.clone()));
                    m
                }
            };
            if members.iter().any(|m| m == user) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A workflow's own allowlist (`allowed_users` / `allowed_channels` / `allowed_groups` of
    /// its Slack trigger), on top of the server's: `Err` holds the refusal to answer.
    pub(super) async fn workflow_allows(
        &self,
        t: &SlackTrigger,
        user: &str,
        channel: &str,
        what: &str,
    ) -> Result<(), String> {
        let own = !t.allowed_users.is_empty()
            || !t.allowed_channels.is_empty()
            || !t.allowed_groups.is_empty();
        if !own
            || t.allowed_users.iter().any(|u| u == user)
            || t.allowed_channels.iter().any(|c| c == channel)
        {
            return Ok(());
        }
        match self.in_groups(user, &t.allowed_groups).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.refuse(user, channel, what)),
            Err(why) => {
                self.refuse(user, channel, what);
                Err(format!("Sorry, I cannot {what} for you: {why}."))
            }
        }
    }

    /// The allowlist of the workflow a run executes (as it was when the run started) applies
    /// to whatever is done to the run: approve, reject, cancel, resume.
    pub(super) async fn run_allows(
        &self,
        run: &str,
        user: &str,
        channel: &str,
        what: &str,
    ) -> Result<(), String> {
        let record = match self.store.run(run) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(format!("No run `{run}`.")),
            Err(e) => return Err(format!("Cannot read {run}: {e}")),
        };
        let source = Source::new(record.workflow_file.clone(), record.workflow_text.clone());
        let trigger = landfall_engine::compile(&source, &self.registry)
            .workflow
            .and_then(|wf| wf.slack);
        match trigger {
            Some(t) => self.workflow_allows(&t, user, channel, what).await,
            None => Ok(()),
        }
    }
}
