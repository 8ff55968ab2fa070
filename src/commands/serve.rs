//! `serve`: the Slack front door (HTTP and/or Socket Mode) until Ctrl-C or SIGTERM, then the
//! runs it executes are interrupted with the grace period (they resume later).

use std::path::PathBuf;
use std::sync::Arc;

use landfall_engine::Engine;

use super::rotate_key::data_key;
use super::{wait_for_stop_signal, App, Failure, Res, EXIT_OK};
use crate::cli::ServeArgs;
use crate::slack::setup::{self, ServeSettings, SetupError};
use crate::slack::{server, socket};

impl From<SetupError> for Failure {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Config(m) => Failure::invalid(m),
            SetupError::Env(m) => Failure::env(m),
        }
    }
}

impl App {
    pub(super) async fn serve(&self, a: ServeArgs) -> Res<i32> {
        let slack = &self.loaded.config.slack;
        setup::check(slack, a.socket_mode)?;
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
        let key = data_key(a.data_key_file.as_deref(), "data key")?;
        let engine = Engine::new(Arc::clone(&self.registry), store).with_data_key(key.clone());
        let serving = setup::front_door(
            slack,
            ServeSettings {
                socket_mode: a.socket_mode,
                allow_users: a.allow_user.clone(),
                allow_channels: a.allow_channel.clone(),
                limits: self.loaded.config.serve.clone(),
                max_body: a.max_body,
                max_parallel: self.loaded.config.max_parallel,
                grace: self.loaded.config.grace,
                data_key: key,
            },
            engine,
            Arc::clone(&self.registry),
            workflows,
        )?;
        if serving.console_only {
            eprintln!("no SLACK_BOT_TOKEN: run threads are printed on the console");
        }
        let fd = serving.front_door;
        let (listener, addr) = server::bind(a.listen)
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
        if serving.nobody_allowed {
            eprintln!("warning: no --allow-user or --allow-channel: nobody may start runs");
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let http = tokio::spawn(Arc::clone(&fd).serve(listener, stop.clone()));
        // Workers sharing a PostgreSQL store take runs no worker executes: a run whose worker
        // died is resumed within its lease and a quarter of it.
        let every = (self.loaded.config.lease / 4).clamp(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(2),
        );
        let picking = tokio::spawn(Arc::clone(&fd).pick_up(every, stop.clone()));
        if let Some(token) = &serving.app_token {
            let socket = socket::serve(
                &serving.api_url,
                token,
                Arc::clone(&fd),
                wait_for_stop_signal(),
            )
            .await;
            stop.cancel();
            socket.map_err(|e| match e {
                socket::SocketError::NotAnAppToken => Failure::invalid(e.to_string()),
                _ => Failure::env(e.to_string()),
            })?;
        } else {
            wait_for_stop_signal().await;
            stop.cancel();
        }
        let _ = picking.await;
        fd.drain().await;
        http.await
            .map_err(|e| Failure::env(format!("the server stopped: {e}")))?
            .map_err(|e| Failure::env(format!("the server stopped: {e}")))?;
        Ok(EXIT_OK)
    }
}
