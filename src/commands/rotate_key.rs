//! `rotate-key`: re-seal every sealed secret under a new data key; and where a data key comes
//! from (a file given as a flag, else `LANDFALL_DATA_KEY`).

use landfall_engine::store::{AuditDraft, Batch};
use landfall_engine::DataKey;
use serde_json::json;

use super::{cli_trigger, App, Failure, Res, EXIT_OK};

impl App {
    /// Opens every sealed secret with the current key and seals it under the new one, in one
    /// commit: a secret that does not open stops everything before anything is written.
    pub(super) fn rotate_key(
        &self,
        current: Option<&std::path::Path>,
        new: &std::path::Path,
    ) -> Res<i32> {
        let old = data_key(current, "current data key")?.ok_or_else(|| {
            Failure::invalid("no current data key: set LANDFALL_DATA_KEY or --data-key-file")
        })?;
        let new_key = data_key(Some(new), "new data key")?
            .ok_or_else(|| Failure::invalid("no new data key: give --new-key-file"))?;
        let store = self
            .existing_store()?
            .ok_or_else(|| self.no_state("secrets"))?;
        let mut resealed = Vec::new();
        let sealed_all = store.secrets()?;
        for (name, sealed) in sealed_all {
            let plain = old.open(&sealed, name.as_bytes()).map_err(|_| {
                Failure::failed(format!(
                    "secret `{name}` does not open with the current key (wrong key, or the secret was tampered with); nothing was changed"
                ))
            })?;
            resealed.push((name.clone(), new_key.seal(&plain, name.as_bytes())));
        }
        let names: Vec<String> = resealed.iter().map(|(n, _)| n.clone()).collect();
        let actor = cli_trigger().actor;
        store.commit(Batch {
            secrets: resealed,
            audit: vec![AuditDraft::new(
                &actor,
                "",
                "data_key_rotated",
                json!({ "secrets": names }),
            )
            .into()],
            ..Default::default()
        })?;
        println!(
            "re-sealed {} secret(s) under the new key; from now on give Landfall the new key (LANDFALL_DATA_KEY or --data-key-file)",
            names.len()
        );
        Ok(EXIT_OK)
    }
}

/// The data key from `file` (a flag, so it wins) or `LANDFALL_DATA_KEY`; `None` if neither
/// is given. `what` names the key in errors.
pub(super) fn data_key(file: Option<&std::path::Path>, what: &str) -> Res<Option<DataKey>> {
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
    DataKey::from_hex(&text)
        .map(Some)
        .map_err(|e| Failure::invalid(format!("{what}: {e}")))
}
