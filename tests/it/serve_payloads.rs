//! Slack's payloads as Slack sends them: request bodies from Slack's own SDK tests (Bolt for
//! Python, with its licence, in `tests/fixtures/slack-sdk-payloads/`), signed and sent over
//! HTTP to `landfall serve`, each on the route Slack would use.

use std::time::Duration;

use serde_json::{json, Value};

use crate::serve::{runs, serve_with, signed, workflows};
use crate::slack_api::SlackApi;
use crate::support::{wait_until, Sandbox};

fn fixtures() -> Vec<(String, String)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/slack-sdk-payloads");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("json" | "form")
            )
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The route and body Slack would use for a fixture.
fn request(name: &str, text: &str) -> (&'static str, String) {
    if name.ends_with(".form") {
        return ("/slack/commands", text.to_string());
    }
    let v: Value = serde_json::from_str(text).unwrap();
    match v["type"].as_str() {
        Some("event_callback" | "url_verification") => ("/slack/events", v.to_string()),
        _ => (
            "/slack/interactions",
            serde_urlencoded::to_string([("payload", v.to_string())]).unwrap(),
        ),
    }
}

#[test]
fn slack_sdk_payloads_are_handled_as_slack_sends_them() {
    let api = SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_with(&sb, &["W111", "U111", "U1"], |cmd| {
        cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url);
    });
    let all = fixtures();
    assert!(all.len() >= 20, "{} fixtures", all.len());
    let mut seen = Vec::new();
    for (name, text) in &all {
        let (path, body) = request(name, text);
        let (code, reply) = signed(&s, path, &body);
        assert_eq!(code, 200, "{name} on {path}: {reply}");
        seen.push(json!({ "fixture": name, "route": path, "answer": reply.chars().take(120).collect::<String>() }));
    }
    insta::assert_json_snapshot!(seen);

    // The fixture's slash command, as Slack sends it for this app's own command.
    let (_, form) = all.iter().find(|(n, _)| n.ends_with(".form")).unwrap();
    let ours = form
        .replace("command=%2Fhello-world", "command=%2Flandfall")
        .replace("text=Hi", "text=help");
    let (code, help) = signed(&s, "/slack/commands", &ours);
    assert_eq!(code, 200);
    assert!(help.contains("/landfall hello"), "{help}");

    // A mention inside a thread (the fixture's message event, mentioning the app): answered
    // under the thread's parent.
    let (_, msg) = all
        .iter()
        .find(|(n, _)| n == "message__message_body.json")
        .unwrap();
    let mut mention: Value = serde_json::from_str(msg).unwrap();
    mention["event_id"] = json!("Ev-thread-mention");
    mention["event"]["type"] = json!("app_mention");
    mention["event"]["text"] = json!("<@W23456789> help");
    mention["event"]["thread_ts"] = json!("1600000000.000100");
    mention["event"]["channel"] = json!("C0THREAD");
    assert_eq!(signed(&s, "/slack/events", &mention.to_string()).0, 200);
    wait_until("the answer in the thread", Duration::from_secs(30), || {
        api.calls()
            .iter()
            .any(|c| c.body["channel"] == "C0THREAD" && c.body["thread_ts"] == "1600000000.000100")
    });

    // Every request was verified (none refused), and none of them started a run.
    std::thread::sleep(Duration::from_millis(1500));
    let audit = sb.json(&["audit", "-", "--json"]);
    assert!(
        !audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "slack_requests_refused"),
        "{audit}"
    );
    assert!(runs(&sb).is_empty());
}
