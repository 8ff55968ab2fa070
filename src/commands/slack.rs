//! `slack install-link`: the one-time link an OAuth install must start from.

use landfall_engine::store::{AuditDraft, Batch};
use serde_json::json;

use super::rotate_key::data_key;
use super::{cli_trigger, print_json, App, Failure, Res, EXIT_OK};

impl App {
    pub(super) fn install_link(
        &self,
        expires: std::time::Duration,
        base_url: Option<String>,
        data_key_file: Option<&std::path::Path>,
        json: bool,
    ) -> Res<i32> {
        let slack = &self.loaded.config.slack;
        if slack.client_id.is_none() || slack.client_secret.is_none() {
            return Err(Failure::invalid(
                "OAuth installs are not configured: set SLACK_CLIENT_ID and SLACK_CLIENT_SECRET (the app's Basic Information page), as for `landfall serve`",
            ));
        }
        let key = data_key(data_key_file, "data key")?.ok_or_else(|| {
            Failure::invalid(
                "no data key: set LANDFALL_DATA_KEY or --data-key-file (the same key `landfall serve` seals the install with)",
            )
        })?;
        let ttl = i64::try_from(expires.as_secs()).unwrap_or(i64::MAX);
        if ttl == 0 {
            return Err(Failure::invalid("--expires must be at least one second"));
        }
        let store = self.open_store()?;
        let actor = cli_trigger().actor;
        let now = chrono::Utc::now().timestamp();
        let link = crate::slack::install::create(store.as_ref(), &key, &actor, ttl, now)
            .map_err(|e| Failure::env(e.to_string()))?;
        let expires_at = chrono::DateTime::from_timestamp(now.saturating_add(ttl), 0)
            .unwrap_or_default()
            .to_rfc3339();
        store.commit(Batch {
            audit: vec![AuditDraft::new(
                &actor,
                "",
                "slack_install_link_created",
                json!({ "expires_at": expires_at }),
            )
            .into()],
            ..Batch::default()
        })?;
        let base = base_url
            .or_else(|| slack.redirect_url.as_deref().and_then(origin))
            .unwrap_or_else(|| "http://127.0.0.1:3000".into());
        let url = format!("{}/slack/install?link={link}", base.trim_end_matches('/'));
        if json {
            print_json(&json!({ "url": url, "expires_at": expires_at }));
        } else {
            println!("{url}");
            eprintln!("valid once, until {expires_at}; open it in the browser that will finish the install");
        }
        Ok(EXIT_OK)
    }
}

/// `https://host:port` of a URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_origin_of_a_redirect_url() {
        assert_eq!(
            super::origin("https://landfall.example.com:8443/slack/oauth/callback").as_deref(),
            Some("https://landfall.example.com:8443")
        );
        assert_eq!(super::origin("not a url"), None);
    }
}
