//! The front door answers Slack in time and only for its own workspace and app: acks never
//! wait on Slack's Web API, clicks on ephemeral messages are answered to the clicker, requests
//! from another workspace or app are refused, repeated warnings are said once.

use std::time::Duration;

use serde_json::json;

use crate::serve::{envelope, runs, serve_with, signed, workflows, Server};
use crate::slack_api::{SlackApi, GROUP, GROUP_MEMBER};
use crate::support::{node, wait_until, Sandbox};

fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

fn said_to(api: &SlackApi, method: &str, user: &str, what: &str) -> bool {
    api.calls().iter().any(|c| {
        c.method == method
            && c.body["user"] == user
            && c.body["text"].as_str().is_some_and(|t| t.contains(what))
    })
}

/// Slack takes 6 s to list a user group: the command is still answered within its window
/// ("working on it"), and the real answer follows, only to the user, once known.
#[test]
fn a_slow_slack_never_holds_up_the_answer_to_a_command() {
    let api = SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    sb.write(
        "wf/grouped.yaml",
        &format!(
            "name: grouped\ntrigger:\n  slack: {{ command: tidy, allowed_groups: [{GROUP}] }}\nsteps:\n  - id: say\n    uses: log\n    with: {{ message: tidy }}\n"
        ),
    );
    let s = serve_with(&sb, &[GROUP_MEMBER], |cmd| {
        cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url);
    });
    api.slow_down(Duration::from_secs(6));
    let started = std::time::Instant::now();
    let (code, reply) = signed(
        &s,
        "/slack/commands",
        &crate::serve::command(GROUP_MEMBER, "tidy", "t1"),
    );
    let took = started.elapsed();
    assert_eq!(code, 200);
    assert!(reply.contains("Working on it"), "{reply}");
    // Not a timing target (that is Slack's 3 s): proof the answer did not wait for Slack.
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    wait_until(
        "the answer to follow, to the user alone",
        Duration::from_secs(60),
        || said_to(&api, "chat.postEphemeral", GROUP_MEMBER, "Started grouped"),
    );
    wait_until("the run", Duration::from_secs(60), || {
        runs(&sb)
            .first()
            .is_some_and(|r| r["status"] == "succeeded")
    });
}

fn command_from(team: &str, app: &str, text: &str, trigger: &str) -> String {
    form(&[
        ("command", "/landfall"),
        ("text", text),
        ("user_id", "U1"),
        ("channel_id", "C1"),
        ("trigger_id", trigger),
        ("team_id", team),
        ("api_app_id", app),
    ])
}

fn pinned(sb: &Sandbox, api: &SlackApi) -> Server {
    serve_with(sb, &["U1"], |cmd| {
        cmd.env("LANDFALL_SLACK__TEAM_ID", "T0OURS")
            .env("LANDFALL_SLACK__APP_ID", "A0LANDFALL")
            .env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url);
    })
}

/// With `slack.team_id` and `slack.app_id` set, a correctly signed request naming another
/// workspace or app is refused and audited; one naming ours is served.
#[test]
fn requests_from_another_workspace_or_app_are_refused() {
    let api = SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let s = pinned(&sb, &api);
    let (_, other_team) = signed(
        &s,
        "/slack/commands",
        &command_from("T0THEIRS", "A0LANDFALL", "hello eve", "t1"),
    );
    assert!(
        other_team.contains("not set up for this workspace"),
        "{other_team}"
    );
    let (_, other_app) = signed(
        &s,
        "/slack/commands",
        &command_from("T0OURS", "A0IMPOSTOR", "hello eve", "t2"),
    );
    assert!(
        other_app.contains("not set up for this workspace"),
        "{other_app}"
    );
    let (_, help) = signed(
        &s,
        "/slack/commands",
        &command_from("T0OURS", "A0LANDFALL", "help", "t3"),
    );
    assert!(help.contains("/landfall hello"), "{help}");

    let mention = |team: &str, id: &str| {
        json!({
            "type": "event_callback", "event_id": id, "team_id": team, "api_app_id": "A0LANDFALL",
            "event": { "type": "app_mention", "user": "U1", "channel": "C9", "text": "<@UBOT> hello mallory", "ts": "1.2" },
        })
        .to_string()
    };
    assert_eq!(
        signed(&s, "/slack/events", &mention("T0THEIRS", "Ev1")).0,
        200
    );
    let click = json!({
        "type": "block_actions", "team": { "id": "T0THEIRS" }, "api_app_id": "A0LANDFALL",
        "user": { "id": "U1" }, "channel": { "id": "C9" }, "message": { "ts": "1.3" },
        "actions": [{ "action_id": "approve", "value": json!({ "run": "r-x", "node": "approve", "digest": "d" }).to_string() }],
    });
    let body = form(&[("payload", &click.to_string())]);
    assert_eq!(signed(&s, "/slack/interactions", &body).0, 200);

    wait_until("four refusals audited", Duration::from_secs(30), || {
        sb.json(&["audit", "-", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["kind"] == "slack_command_refused"
                    && e["details"]["what"] == "a request from another workspace or app"
            })
            .count()
            == 4
    });
    // The mention from ours is served (the one from theirs was not: no run, no reply in C9).
    assert_eq!(
        signed(&s, "/slack/events", &mention("T0OURS", "Ev2")).0,
        200
    );
    wait_until("our mention's run", Duration::from_secs(60), || {
        runs(&sb).len() == 1
    });
    assert!(
        !api.calls().iter().any(|c| c.method == "chat.postEphemeral"
            || (c.body["channel"] == "C9" && c.body["thread_ts"] == "1.3")),
        "nothing was said for the other workspace"
    );
}

/// A click on an approval request only the clicker could see (an ephemeral message: its
/// `container` is all Slack says about it) records the decision and answers the clicker alone.
#[test]
fn a_click_on_an_ephemeral_message_is_answered_to_the_clicker_alone() {
    let api = SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_with(&sb, &["U1"], |cmd| {
        cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url);
    });
    let (_, reply) = signed(
        &s,
        "/slack/commands",
        &crate::serve::command("U1", "ship", "t1"),
    );
    assert!(reply.contains("Started gated"), "{reply}");
    let run = runs(&sb)[0]["run_id"].as_str().unwrap().to_string();
    wait_until("the approval to wait", Duration::from_secs(60), || {
        node(&sb.json(&["status", &run, "--json"]), "approve")["status"] == "waiting"
    });
    let click = json!({
        "type": "block_actions", "user": { "id": "U1" },
        "container": { "type": "message", "message_ts": "1700000001.000200", "channel_id": "C5", "is_ephemeral": true },
        "actions": [{ "action_id": "approve", "value": json!({ "run": run, "node": "approve", "digest": "d-42" }).to_string() }],
    });
    let body = form(&[("payload", &click.to_string())]);
    assert_eq!(signed(&s, "/slack/interactions", &body).0, 200);
    wait_until("the run to finish", Duration::from_secs(60), || {
        runs(&sb)[0]["status"] == "succeeded"
    });
    wait_until("the answer to the clicker", Duration::from_secs(30), || {
        api.calls().iter().any(|c| {
            c.method == "chat.postEphemeral" && c.body["user"] == "U1" && c.body["channel"] == "C5"
        })
    });
    assert!(
        !api.calls()
            .iter()
            .any(|c| c.method == "chat.postMessage" && c.body["thread_ts"] == "1700000001.000200"),
        "no thread under a message only one person can see"
    );
}

/// At the default log level `serve` says its warnings (a refused request), and a warning that
/// could repeat per Socket Mode frame is said once, with how many were left unsaid.
#[test]
fn serve_warns_by_default_and_once_for_repeated_socket_frames() {
    let api = SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_with(&sb, &["U1"], |cmd| {
        cmd.arg("--socket-mode")
            .env("SLACK_APP_TOKEN", "xapp-1-test-app-token")
            .env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url);
    });
    wait_until("the WebSocket", Duration::from_secs(30), || {
        api.connections() > 0
    });
    for i in 0..5 {
        let id = format!("bad{i}");
        api.push(envelope(
            &id,
            "slash_commands",
            json!({ "text": "no user, no channel" }),
        ));
        wait_until("its ack", Duration::from_secs(30), || {
            api.ack(&id).is_some()
        });
    }
    // A forged HTTP request (the signing secret is set too): its warning is on stderr.
    let forged = crate::serve::post(&s, "/slack/commands", "x=1", None, None);
    assert_eq!(forged.0, 401);
    let log = |what: &str| -> usize {
        s.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    wait_until("the refusal's warning", Duration::from_secs(30), || {
        log("refused a request") == 1
    });
    assert_eq!(
        log("a Socket Mode envelope could not be read"),
        1,
        "{:#?}",
        s.log.lock().unwrap()
    );
}
