//! `config show`: every effective setting, secrets hidden, with the layer it came from.

use super::{print_json, App, Res, EXIT_OK};

impl App {
    pub(super) fn config_show(&self, json: bool) -> Res<i32> {
        let settings = self.loaded.settings();
        if json {
            print_json(&serde_json::to_value(&settings).unwrap_or_default());
            return Ok(EXIT_OK);
        }
        let mut out = String::new();
        for s in settings {
            out.push_str(&format!(
                "{:<24} = {:<40} # {}\n",
                s.key,
                s.value.to_string(),
                s.source
            ));
        }
        print!("{out}");
        Ok(EXIT_OK)
    }
}
