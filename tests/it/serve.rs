//! `landfall serve` over real HTTP: every request signed (or not) like Slack signs it.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::Duration;

use landfall::slack::signature::sign;
use serde_json::Value;

use crate::support::{node, wait_until, Emulator, Sandbox};

pub(crate) const SECRET: &str = "test-signing-secret";

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    /// Everything the server wrote on stderr so far.
    pub(crate) log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Sends `signal` (`STOP`, `CONT`, …) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal}");
    }

    /// `kill -9`: no drain, no lease given back.
    pub(crate) fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn workflows(sb: &Sandbox) {
    std::fs::create_dir_all(sb.path("wf")).unwrap();
    sb.write(
        "wf/hello.yaml",
        r#"
name: hello
description: Say hello
inputs:
  name: { type: string }
  greeting: { type: string, default: hello }
trigger:
  slack: { command: hello, args: [name] }
steps:
  - id: greet
    uses: log
    with: { message: "{{ inputs.greeting }} {{ inputs.name }}" }
"#,
    );
    sb.write(
        "wf/gated.yaml",
        r#"
name: gated
trigger:
  slack: { command: ship, allowed_users: [U1] }
steps:
  - id: approve
    uses: approval
    with: { title: "Ship it", digest: "d-42", timeout: 10m }
"#,
    );
}

fn serve(sb: &Sandbox, allow: &[&str]) -> Server {
    serve_with(sb, allow, |_| {})
}

pub(crate) fn serve_with(
    sb: &Sandbox,
    allow: &[&str],
    setup: impl FnOnce(&mut std::process::Command),
) -> Server {
    serve_limited(sb, allow, Some("4096"), setup)
}

/// `serve` with `--max-body` when given (else the configuration's, 1 MiB by default).
pub(crate) fn serve_limited(
    sb: &Sandbox,
    allow: &[&str],
    max_body: Option<&str>,
    setup: impl FnOnce(&mut std::process::Command),
) -> Server {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workflows", "wf"];
    if let Some(m) = max_body {
        args.extend(["--max-body", m]);
    }
    for u in allow {
        args.push("--allow-user");
        args.push(u);
    }
    let mut cmd = sb.cmd(&args);
    cmd.env("SLACK_SIGNING_SECRET", SECRET)
        .env("LANDFALL_SERVE__REFUSAL_SUMMARY_EVERY", "1s");
    setup(&mut cmd);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            keep.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("serve printed its address");
    Server { child, base, log }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().timestamp().to_string()
}

/// Posts `body` to `path`, signed as Slack would (or with the given headers).
pub(crate) fn post(
    s: &Server,
    path: &str,
    body: &str,
    ts: Option<&str>,
    sig: Option<&str>,
) -> (u16, String) {
    let mut req = ureq::post(&format!("{}{path}", s.base));
    if let Some(t) = ts {
        req = req.set("X-Slack-Request-Timestamp", t);
    }
    if let Some(g) = sig {
        req = req.set("X-Slack-Signature", g);
    }
    // A command's answer is Slack's JSON message; its text is what people read.
    let text = |b: String| match serde_json::from_str::<Value>(&b) {
        Ok(v) if v["text"].is_string() => v["text"].as_str().unwrap_or_default().to_string(),
        _ => b,
    };
    match req.send_string(body) {
        Ok(r) => (r.status(), text(r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    }
}

/// Writes `request` as is on a new connection and reads the answer until the server closes
/// it (or 20 s pass): for requests a client library would not send.
pub(crate) fn raw_http(s: &Server, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let to = s.base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(to).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(request).unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer
}

pub(crate) fn signed(s: &Server, path: &str, body: &str) -> (u16, String) {
    let ts = now();
    post(
        s,
        path,
        body,
        Some(&ts),
        Some(&sign(SECRET, &ts, body.as_bytes())),
    )
}

pub(crate) fn command(user: &str, text: &str, trigger: &str) -> String {
    serde_urlencoded::to_string([
        ("command", "/landfall"),
        ("text", text),
        ("user_id", user),
        ("channel_id", "C1"),
        ("trigger_id", trigger),
    ])
    .unwrap()
}

/// The form Slack posts when `user` clicks Approve on the request of `run`'s `node` for
/// `digest`.
pub(crate) fn approval_click(user: &str, run: &str, node: &str, digest: &str) -> String {
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": { "id": user },
        "channel": { "id": "C1" },
        "actions": [{ "action_id": "approve", "value": serde_json::json!({ "run": run, "node": node, "digest": digest }).to_string() }],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap_or_default()
}

pub(crate) fn runs(sb: &Sandbox) -> Vec<Value> {
    if !sb.path(".landfall/state.redb").exists() {
        return Vec::new();
    }
    sb.json(&["status", "--json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn unverified_requests_are_refused_and_audited_never_acted_on() {
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve(&sb, &["U1"]);
    let body = command("U1", "hello world", "t1");
    let ts = now();
    let good = sign(SECRET, &ts, body.as_bytes());
    assert_eq!(
        post(&s, "/slack/commands", &body, None, None).0,
        401,
        "no headers"
    );
    assert_eq!(
        post(&s, "/slack/commands", &body, Some(&ts), Some("v0=00")).0,
        401,
        "wrong signature"
    );
    assert_eq!(
        post(
            &s,
            "/slack/commands",
            &body,
            Some(&ts),
            Some(&sign("other", &ts, body.as_bytes()))
        )
        .0,
        401,
        "another app's secret"
    );
    let old = (chrono::Utc::now().timestamp() - 600).to_string();
    assert_eq!(
        post(
            &s,
            "/slack/commands",
            &body,
            Some(&old),
            Some(&sign(SECRET, &old, body.as_bytes()))
        )
        .0,
        401,
        "a replay from 10 minutes ago"
    );
    assert_eq!(
        post(
            &s,
            "/slack/commands",
            &format!("{body}&x=1"),
            Some(&ts),
            Some(&good)
        )
        .0,
        401,
        "body changed"
    );
    let answer = raw_http(
        &s,
        b"POST /slack/commands HTTP/1.1\r\nHost: landfall\r\nContent-Length: 8192\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "over --max-body: {answer}"
    );
    assert!(runs(&sb).is_empty(), "nothing ran");
    let (code, _) = signed(&s, "/slack/commands", &body);
    assert_eq!(code, 200);
    // Counted, then audited as one summary per period (1 s here) naming reason and address.
    let summaries = || -> Vec<Value> {
        sb.json(&["audit", "-", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "slack_requests_refused")
            .cloned()
            .collect()
    };
    wait_until("the refusals' summary", Duration::from_secs(30), || {
        summaries()
            .iter()
            .map(|e| e["details"]["total"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 6
    });
    let all = summaries();
    let tally: Vec<(String, String, u64)> = all
        .iter()
        .flat_map(|e| {
            e["details"]["refusals"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|r| {
            (
                r["reason"].as_str().unwrap().to_string(),
                r["peer"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        tally.iter().all(|(_, peer, _)| peer == "127.0.0.1"),
        "{tally:?}"
    );
    let count = |why: &str| -> u64 {
        tally
            .iter()
            .filter(|(r, _, _)| r.contains(why))
            .map(|(_, _, n)| n)
            .sum()
    };
    assert_eq!(count("body over the limit"), 1, "{tally:?}");
    assert_eq!(count("missing"), 1, "{tally:?}");
    assert_eq!(count("too old or in the future"), 1, "{tally:?}");
    assert_eq!(count("does not match"), 3, "{tally:?}");
    assert_eq!(sb.run(&["audit", "-", "--verify"]).status.code(), Some(0));
}

#[test]
fn a_signed_command_starts_a_run_as_its_user_once() {
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve(&sb, &["U1"]);
    let (code, help) = signed(&s, "/slack/commands", &command("U9", "help", "t0"));
    assert_eq!(code, 200);
    assert!(help.contains("/landfall hello NAME"), "{help}");

    let body = command("U1", "hello world greeting=hi", "t1");
    let (code, reply) = signed(&s, "/slack/commands", &body);
    assert_eq!(code, 200, "{reply}");
    assert!(reply.contains("Started hello as"), "{reply}");
    // Slack retried the same command: no second run.
    let (_, again) = signed(&s, "/slack/commands", &body);
    assert!(again.contains("Already on it"), "{again}");
    wait_until("the run to finish", Duration::from_secs(60), || {
        runs(&sb)
            .first()
            .is_some_and(|r| r["status"] == "succeeded")
    });
    let all = runs(&sb);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["actor"], "U1", "the Slack user is the actor");
    let run = all[0]["run_id"].as_str().unwrap().to_string();
    let doc = sb.json(&["status", &run, "--json"]);
    assert_eq!(node(&doc, "greet")["outputs"]["message"], "hi world");

    // Not on the allowlist: a polite refusal, audited with the user as actor.
    let (_, no) = signed(&s, "/slack/commands", &command("U2", "hello mallory", "t2"));
    assert!(no.starts_with("Sorry, you are not allowed"), "{no}");
    let audit = sb.json(&["audit", "-", "--json"]);
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "slack_command_refused" && e["actor"] == "U2"));
    assert_eq!(runs(&sb).len(), 1);

    // A mention, retried by Slack with the same event id: one run. The retry is recognised
    // before either is acknowledged (the work happens after), so the second never starts one.
    let event = serde_json::json!({
        "type": "event_callback", "event_id": "Ev1",
        "event": { "type": "app_mention", "user": "U1", "channel": "C1", "text": "<@UBOT> hello there" },
    })
    .to_string();
    assert_eq!(signed(&s, "/slack/events", &event).0, 200);
    assert_eq!(signed(&s, "/slack/events", &event).0, 200);
    wait_until("the mention's run", Duration::from_secs(60), || {
        runs(&sb)
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count()
            >= 2
    });
    assert_eq!(runs(&sb).len(), 2, "the retried event started nothing");

    let challenge =
        serde_json::json!({ "type": "url_verification", "challenge": "c-123" }).to_string();
    let (code, body) = signed(&s, "/slack/events", &challenge);
    assert_eq!((code, body.contains("c-123")), (200, true));
}

#[test]
fn an_approval_button_resumes_a_waiting_run() {
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve(&sb, &["U1", "U3"]);
    // U3 is on the server's allowlist but not on the workflow's own list.
    let (_, no) = signed(&s, "/slack/commands", &command("U3", "ship", "t0"));
    assert!(no.starts_with("Sorry"), "{no}");
    let (_, reply) = signed(&s, "/slack/commands", &command("U1", "ship", "t1"));
    assert!(reply.contains("Started gated"), "{reply}");
    let run = runs(&sb)[0]["run_id"].as_str().unwrap().to_string();
    wait_until("the approval to wait", Duration::from_secs(60), || {
        node(&sb.json(&["status", &run, "--json"]), "approve")["status"] == "waiting"
    });
    let click = approval_click("U1", &run, "approve", "d-42");
    assert_eq!(signed(&s, "/slack/interactions", &click).0, 200);
    wait_until("the run to finish", Duration::from_secs(60), || {
        runs(&sb)[0]["status"] == "succeeded"
    });
    let doc = sb.json(&["status", &run, "--json"]);
    assert_eq!(node(&doc, "approve")["outputs"]["by"], "U1");
}

/// The operators' policy in Slack: who clicked, with which digest, counts or is told why not;
/// the thread says what is recorded until the policy is met; the workflow's allowlist applies
/// to deciding, not only to starting.
#[test]
fn approval_buttons_follow_the_operators_policy() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    sb.write(
        "wf/guarded.yaml",
        r#"
name: guarded
trigger:
  slack: { command: guard, allowed_users: [U1, U2, U9], allowed_groups: [S0ADMINS] }
steps:
  - id: approve
    uses: approval
    with: { title: "Change prod", digest: "d-77", timeout: 10m, required: false }
"#,
    );
    sb.write(
        "landfall.toml",
        r#"
[[approval.policies]]
name = "everything"
min_approvals = 2
approvers = ["U1", "U2", "S0ADMINS"]
"#,
    );
    let s = serve_with(
        &sb,
        &["U1", "U2", "U5", "U9", crate::slack_api::GROUP_MEMBER],
        |cmd| {
            cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token")
                .env("SLACK_API_URL", &api.url);
        },
    );
    let (_, reply) = signed(&s, "/slack/commands", &command("U1", "guard", "t1"));
    assert!(reply.contains("Started guarded"), "{reply}");
    let run = runs(&sb)[0]["run_id"].as_str().unwrap().to_string();
    wait_until("the approval to wait", Duration::from_secs(60), || {
        node(&sb.json(&["status", &run, "--json"]), "approve")["status"] == "waiting"
    });
    let click = |user: &str, digest: &str| {
        let payload = serde_json::json!({
            "type": "block_actions",
            "user": { "id": user },
            "channel": { "id": "C1" },
            "message": { "ts": "1700000000.000100" },
            "actions": [{ "action_id": "approve", "value": serde_json::json!({ "run": run, "node": "approve", "digest": digest }).to_string() }],
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        assert_eq!(signed(&s, "/slack/interactions", &body).0, 200);
    };
    let said = |what: &str| {
        let what = what.to_string();
        wait_until(
            &format!("Slack to be told {what:?}"),
            Duration::from_secs(30),
            || {
                api.calls().iter().any(|c| {
                    c.body["text"]
                        .as_str()
                        .is_some_and(|t| t.contains(what.as_str()))
                })
            },
        );
    };
    // The request names the policy.
    said("needs 2 approvals under policy everything (not the requester)");
    // On the server's allowlist, not on the workflow's: may not decide.
    click("U5", "d-77");
    said("Sorry, you are not allowed to decide approvals here");
    // The requester, a non-approver, a stale button: refused, and told why.
    click("U1", "d-77");
    said("U1 started this run, and policy everything needs someone else");
    click("U9", "d-77");
    said("U9 is not among the approvers of policy everything");
    click("U2", "d-76");
    said("this plan is outdated");
    // One approval: recorded, not "approved".
    click("U2", "d-77");
    said("<@U2> approved `approve` of `");
    said("recorded 1 of 2 approvals (policy everything)");
    assert_eq!(
        node(&sb.json(&["status", &run, "--json"]), "approve")["status"],
        "waiting"
    );
    // A member of the approving user group completes it.
    click(crate::slack_api::GROUP_MEMBER, "d-77");
    wait_until("the run to finish", Duration::from_secs(60), || {
        runs(&sb)[0]["status"] == "succeeded"
    });
    let doc = sb.json(&["status", &run, "--json"]);
    assert_eq!(
        node(&doc, "approve")["outputs"]["approvers"],
        serde_json::json!([crate::slack_api::GROUP_MEMBER, "U2"])
    );
    // Only the decisions that count were recorded.
    let audit = sb.json(&["audit", &run, "--json"]);
    let recorded: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "signal_received")
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert_eq!(recorded, ["U2", crate::slack_api::GROUP_MEMBER]);
}

#[test]
fn a_slash_command_onboards_a_customer_against_the_emulator() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(sb.path("wf")).unwrap();
    std::fs::create_dir_all(sb.path("examples/customers")).unwrap();
    std::fs::copy(
        root.join("workflows/onboarding.yaml"),
        sb.path("wf/onboarding.yaml"),
    )
    .unwrap();
    std::fs::copy(
        root.join("examples/customers/acme.yaml"),
        sb.path("examples/customers/acme.yaml"),
    )
    .unwrap();
    let s = serve_with(&sb, &["U1"], |cmd| {
        cmd.env("LANDFALL_TEMPLATES_DIR", root.join("templates"));
        emu.apply(cmd);
    });
    let (_, reply) = signed(&s, "/slack/commands", &command("U1", "onboard acme", "t1"));
    assert!(reply.contains("Started onboarding as"), "{reply}");
    let (_, missing) = signed(
        &s,
        "/slack/commands",
        &command("U1", "onboard nobody", "t2"),
    );
    assert!(
        missing.contains("There is no `examples/customers/nobody.yaml`"),
        "{missing}"
    );
    wait_until("onboarding to finish", Duration::from_secs(180), || {
        runs(&sb).first().is_some_and(|r| r["status"] != "running")
    });
    let r = &runs(&sb)[0];
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["actor"], "U1");
    let run = r["run_id"].as_str().unwrap();
    let audit = sb.json(&["audit", run, "--json"]);
    assert!(
        audit.as_array().unwrap().iter().all(|e| e["actor"] == "U1"),
        "every entry of a Slack-started run names its user"
    );
    assert!(audit.to_string().contains("Acme Corp (acme) is onboarded"));
}

#[test]
fn each_run_talks_in_its_own_thread_through_the_web_api() {
    // The first two calls fail (429, then 500): delivery retries, the runs never wait on it.
    let api = crate::slack_api::SlackApi::start(2);
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_with(&sb, &["U1"], |cmd| {
        cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url)
            .env("LANDFALL_LOG", "trace");
    });
    let (_, a) = signed(&s, "/slack/commands", &command("U1", "hello alice", "t1"));
    let (_, b) = signed(&s, "/slack/commands", &command("U1", "hello bob", "t2"));
    assert!(a.contains("Started") && b.contains("Started"), "{a} / {b}");
    wait_until("both runs to finish", Duration::from_secs(60), || {
        runs(&sb)
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count()
            == 2
    });
    // Each thread ends with its summary.
    wait_until("both summaries", Duration::from_secs(30), || {
        api.calls()
            .iter()
            .filter(|c| {
                c.body["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("succeeded. `landfall status"))
            })
            .count()
            == 2
    });
    assert_eq!(api.refused(), 2);
    // A mention is answered in the mention's own thread.
    let event = serde_json::json!({
        "type": "event_callback", "event_id": "Ev9",
        "event": { "type": "app_mention", "user": "U1", "channel": "C7", "ts": "1699999999.000001", "text": "<@UBOT> help" },
    })
    .to_string();
    assert_eq!(signed(&s, "/slack/events", &event).0, 200);
    wait_until("the answer to the mention", Duration::from_secs(30), || {
        api.calls().iter().any(|c| {
            c.body["channel"] == "C7"
                && c.body["thread_ts"] == "1699999999.000001"
                && c.body["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("/landfall hello NAME")
        })
    });
    // Even at trace level, neither the token nor the signing secret is ever logged.
    let log = s.log.lock().unwrap().join("\n");
    assert!(log.len() > 1000, "trace logging was on: {log}");
    assert!(
        !log.contains("xoxb-test-token") && !log.contains(SECRET),
        "a secret was logged"
    );
    let calls = api.calls();
    assert!(calls
        .iter()
        .all(|c| c.authorization == "Bearer xoxb-test-token"));
    for r in runs(&sb) {
        let run = r["run_id"].as_str().unwrap().to_string();
        let header = calls
            .iter()
            .find(|c| {
                c.method == "chat.postMessage"
                    && c.body["thread_ts"].is_null()
                    && c.body["text"].as_str().unwrap_or_default().contains(&run)
            })
            .unwrap_or_else(|| panic!("no header for {run}: {calls:#?}"));
        // Property 2, end to end: every reply that names this run is in its thread, and
        // every message in its thread is about it.
        for c in calls
            .iter()
            .filter(|c| c.body["thread_ts"] == header.ts.as_str())
        {
            let t = c.body["text"].as_str().unwrap_or_default();
            assert!(
                !runs(&sb)
                    .iter()
                    .any(|o| o["run_id"] != run.as_str()
                        && t.contains(o["run_id"].as_str().unwrap())),
                "{t}"
            );
        }
        let summary = calls
            .iter()
            .find(|c| {
                c.body["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&format!("Run `{run}` succeeded")))
            })
            .unwrap();
        assert_eq!(
            summary.body["thread_ts"],
            header.ts.as_str(),
            "the summary is in the run's own thread"
        );
        let edits: Vec<&crate::slack_api::Call> = calls
            .iter()
            .filter(|c| c.method == "chat.update" && c.ts == header.ts)
            .collect();
        assert!(
            edits.last().is_some_and(|e| e.body["text"]
                .as_str()
                .unwrap_or_default()
                .contains("succeeded")),
            "the header ends edited to the outcome: {edits:#?}"
        );
    }
}

/// The app's OAuth credentials and the data key, as `serve` and `slack install-link` need them.
pub(crate) fn oauth_app(cmd: &mut std::process::Command, api_url: &str) {
    cmd.env("SLACK_API_URL", api_url)
        .env("SLACK_CLIENT_ID", "cid-1")
        .env("SLACK_CLIENT_SECRET", "csecret-1")
        .env("LANDFALL_DATA_KEY", "11".repeat(32));
}

#[test]
fn an_oauth_install_checks_its_state_and_seals_the_grant() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let oauth_env = |cmd: &mut std::process::Command| oauth_app(cmd, &api.url);
    let s = serve_with(&sb, &["U1"], |cmd| {
        oauth_env(cmd);
        cmd.env("LANDFALL_LOG", "trace");
    });
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let status = |r: Result<ureq::Response, ureq::Error>| match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    };
    // Nobody starts an install without an operator's link.
    let (code, text) = status(agent.get(&format!("{}/slack/install", s.base)).call());
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("landfall slack install-link"), "{text}");
    let new_link = || -> String {
        let mut cmd = sb.cmd(&["slack", "install-link", "--json", "--base-url", &s.base]);
        oauth_env(&mut cmd);
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            crate::support::stderr(&out)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["url"].as_str().unwrap().to_string()
    };
    // A link starts one install: Slack's page, with a fresh state, and a cookie for this browser.
    let start = |link: &str| -> (String, String) {
        let r = agent.get(link).call().unwrap();
        assert_eq!(r.status(), 302);
        let location = r.header("location").unwrap().to_string();
        assert!(location.contains("client_id=cid-1"), "{location}");
        let cookie = r
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert!(r.header("set-cookie").unwrap().contains("HttpOnly"));
        let state = location
            .split("state=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string();
        (state, cookie)
    };
    let callback = |state: &str, code: &str, cookie: Option<&str>| {
        let mut req = agent.get(&format!(
            "{}/slack/oauth/callback?code={code}&state={state}",
            s.base
        ));
        if let Some(c) = cookie {
            req = req.set("Cookie", c);
        }
        status(req.call())
    };
    let link = new_link();
    let (stolen_state, _) = start(&link);
    assert_eq!(
        status(agent.get(&link).call()).0,
        403,
        "a link is used once"
    );
    assert_eq!(
        callback("forged", "the-code", None).0,
        403,
        "a state we never handed out"
    );
    let (code, text) = callback(
        &stolen_state,
        "the-code",
        Some("landfall_install=someone-else"),
    );
    assert_eq!(code, 403, "a state from another browser: {text}");
    assert!(text.contains("another browser"), "{text}");

    let (state, cookie) = start(&new_link());
    assert_eq!(callback(&state, "the-code", Some(&cookie)).0, 200);
    assert_eq!(
        callback(&state, "the-code", Some(&cookie)).0,
        403,
        "a state is used once"
    );
    let exchange = api
        .calls()
        .into_iter()
        .find(|c| c.method == "oauth.v2.access")
        .unwrap();
    assert_eq!(exchange.body["code"], "the-code");
    assert!(
        exchange.authorization.starts_with("Basic "),
        "client credentials go in Basic auth"
    );

    // The installed token is used for the run's thread, and is not in the state file in clear.
    let (_, reply) = signed(
        &s,
        "/slack/commands",
        &command("U1", "hello installed", "t1"),
    );
    assert!(reply.contains("Started"), "{reply}");
    wait_until("a thread message", Duration::from_secs(30), || {
        api.calls().iter().any(|c| c.method == "chat.postMessage")
    });
    let post = api
        .calls()
        .into_iter()
        .find(|c| c.method == "chat.postMessage")
        .unwrap();
    assert!(
        post.authorization
            .starts_with("Bearer xoxe.xoxb-1-fresh-token-"),
        "{}",
        post.authorization.len()
    );
    let db = std::fs::read(sb.path(".landfall/state.redb")).unwrap();
    let needle = b"xoxe.xoxb-1-fresh-token-";
    assert!(
        !db.windows(needle.len()).any(|w| w == needle),
        "the token is sealed at rest"
    );
    let audit = sb.json(&["audit", "-", "--json"]);
    let kinds: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"slack_installed") && kinds.contains(&"slack_install_refused"),
        "{kinds:?}"
    );
    assert!(
        !audit.to_string().contains("fresh-token"),
        "no token in the audit log"
    );
    // Even at trace level: no install code, token or client secret in the logs.
    let log = s.log.lock().unwrap().join("\n");
    assert!(log.len() > 1000, "trace logging was on");
    for secret in ["the-code", "fresh-token", "refresh-token", "csecret-1"] {
        assert!(!log.contains(secret), "{secret} was logged");
    }

    // An install for another workspace never replaces this one's grant.
    let exchanges = || {
        api.calls()
            .iter()
            .filter(|c| c.method == "oauth.v2.access")
            .count()
    };
    let before = exchanges();
    let (state, cookie) = start(&new_link());
    let (code, text) = callback(&state, "code-for-T0OUTSIDER", Some(&cookie));
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("slack.team_id"), "{text}");
    assert_eq!(exchanges(), before + 1);
    let (_, reply) = signed(&s, "/slack/commands", &command("U1", "hello again", "t9"));
    assert!(reply.contains("Started"), "{reply}");
    wait_until("the second run's thread", Duration::from_secs(30), || {
        api.calls()
            .iter()
            .filter(|c| c.method == "chat.postMessage")
            .count()
            >= 2
    });
    let last = api
        .calls()
        .into_iter()
        .rfind(|c| c.method == "chat.postMessage")
        .unwrap();
    assert_eq!(
        last.authorization, post.authorization,
        "still this workspace's token"
    );

    // A failed exchange says what failed, never what Slack (or a proxy) answered.
    let (state, cookie) = start(&new_link());
    let (code, text) = callback(&state, "leaky-code", Some(&cookie));
    assert_eq!(code, 502, "{text}");
    assert!(text.contains("HTTP 502"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
    let log = s.log.lock().unwrap().join("\n");
    assert!(!log.contains("leaked-in-body"), "the body was logged");
}

#[test]
fn after_a_crash_a_resumed_run_keeps_talking_in_its_thread() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let start = |sb: &Sandbox| {
        serve_with(sb, &["U1"], |cmd| {
            cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token-000000")
                .env("SLACK_API_URL", &api.url);
        })
    };
    let s = start(&sb);
    let (_, reply) = signed(&s, "/slack/commands", &command("U1", "ship", "t1"));
    assert!(reply.contains("Started gated"), "{reply}");
    let asked = |n: usize| {
        api.calls()
            .iter()
            .filter(|c| {
                c.body["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Approval needed")
            })
            .count()
            >= n
    };
    wait_until(
        "the approval request in the thread",
        Duration::from_secs(30),
        || asked(1),
    );
    let run = runs(&sb)[0]["run_id"].as_str().unwrap().to_string();
    drop(s); // kill -9: the run is cut off while it waits

    let s = start(&sb);
    let (_, reply) = signed(
        &s,
        "/slack/commands",
        &command("U1", &format!("resume {run}"), "t2"),
    );
    assert!(reply.contains("Resuming"), "{reply}");
    wait_until("the request asked again", Duration::from_secs(30), || {
        asked(2)
    });
    let payload = serde_json::json!({
        "type": "block_actions", "user": { "id": "U1" }, "channel": { "id": "C1" },
        "actions": [{ "action_id": "approve", "value": serde_json::json!({ "run": run, "node": "approve", "digest": "d-42" }).to_string() }],
    });
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    assert_eq!(signed(&s, "/slack/interactions", &body).0, 200);
    wait_until("the summary", Duration::from_secs(30), || {
        api.calls().iter().any(|c| {
            c.body["text"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("Run `{run}` succeeded"))
        })
    });
    let calls = api.calls();
    let headers: Vec<_> = calls
        .iter()
        .filter(|c| {
            c.method == "chat.postMessage"
                && c.body["thread_ts"].is_null()
                && c.body["text"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(":hourglass")
        })
        .collect();
    assert_eq!(
        headers.len(),
        1,
        "one thread, before and after the crash: {calls:#?}"
    );
    let ts = headers[0].ts.clone();
    for c in calls
        .iter()
        .filter(|c| c.method == "chat.postMessage" && !c.body["thread_ts"].is_null())
    {
        if c.body["channel"] == "C1"
            && c.body["text"]
                .as_str()
                .unwrap_or_default()
                .contains("Approval needed")
        {
            assert_eq!(c.body["thread_ts"], ts.as_str());
        }
    }
    let summary = calls
        .iter()
        .find(|c| {
            c.body["text"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("Run `{run}` succeeded"))
        })
        .unwrap();
    assert_eq!(summary.body["thread_ts"], ts.as_str());
}

#[test]
fn a_cli_run_talks_in_slack_too_when_a_token_and_channel_are_configured() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let mut cmd = sb.cmd(&["run", "wf/hello.yaml", "--set", "name=cli"]);
    cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token-000000")
        .env("SLACK_API_URL", &api.url)
        .env("LANDFALL_SLACK__DEFAULT_CHANNEL", "C9");
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::support::stderr(&out)
    );
    let calls = api.calls();
    let header = calls
        .iter()
        .find(|c| c.method == "chat.postMessage" && c.body["thread_ts"].is_null())
        .expect("a thread header");
    assert_eq!(header.body["channel"], "C9");
    assert!(
        calls
            .iter()
            .any(|c| c.body["thread_ts"] == header.ts.as_str()
                && c.body["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("succeeded. `landfall status")),
        "the summary was delivered before the process ended: {calls:#?}"
    );
    // Without a token nothing is sent and the run is the same.
    let out = sb.run(&["run", "wf/hello.yaml", "--set", "name=quiet"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(api.calls().len(), calls.len());
}

#[test]
fn a_workflow_open_to_a_user_group_asks_slack_who_is_in_it() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    sb.write(
        "wf/grouped.yaml",
        &format!(
            r#"
name: grouped
trigger:
  slack: {{ command: tidy, allowed_groups: [{}] }}
steps:
  - id: say
    uses: log
    with: {{ message: tidy }}
"#,
            crate::slack_api::GROUP
        ),
    );
    let member = crate::slack_api::GROUP_MEMBER;
    // Both are on the server's allowlist; only one is in the group.
    let s = serve_with(&sb, &[member, "U0OTHER"], |cmd| {
        cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url);
    });
    let (_, no) = signed(&s, "/slack/commands", &command("U0OTHER", "tidy", "t1"));
    assert!(no.starts_with("Sorry, you are not allowed"), "{no}");
    let (_, yes) = signed(&s, "/slack/commands", &command(member, "tidy", "t2"));
    assert!(yes.contains("Started grouped"), "{yes}");
    let (_, again) = signed(&s, "/slack/commands", &command(member, "tidy", "t3"));
    assert!(again.contains("Started grouped"), "{again}");
    let lookups: Vec<_> = api
        .calls()
        .into_iter()
        .filter(|c| c.method == "usergroups.users.list")
        .collect();
    assert_eq!(lookups.len(), 1, "membership is cached: {lookups:#?}");
    assert_eq!(lookups[0].body["usergroup"], crate::slack_api::GROUP);
    wait_until("both runs", Duration::from_secs(60), || {
        runs(&sb)
            .iter()
            .filter(|r| r["status"] == "succeeded" && r["actor"] == member)
            .count()
            == 2
    });
    let audit = sb.json(&["audit", "-", "--json"]);
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "slack_command_refused" && e["actor"] == "U0OTHER"));
    drop(s);

    // Without a bot token membership cannot be known: refused, and told why.
    let s = serve(&sb, &[member]);
    let (_, no) = signed(&s, "/slack/commands", &command(member, "tidy", "t4"));
    assert!(
        no.contains("cannot be checked without a Slack bot token"),
        "{no}"
    );
}

/// A Socket Mode envelope as Slack sends it.
pub(crate) fn envelope(id: &str, kind: &str, payload: Value) -> Value {
    serde_json::json!({
        "envelope_id": id,
        "type": kind,
        "accepts_response_payload": kind != "events_api",
        "payload": payload,
    })
}

pub(crate) fn slash(user: &str, text: &str, trigger: &str) -> Value {
    serde_json::json!({
        "token": "unused", "team_id": "T1", "team_domain": "acme", "channel_id": "C1",
        "channel_name": "ops", "user_id": user, "user_name": "someone", "command": "/landfall",
        "text": text, "api_app_id": "A0LANDFALL", "response_url": "https://hooks.slack.invalid/1",
        "trigger_id": trigger,
    })
}

#[test]
fn socket_mode_takes_commands_mentions_and_clicks_without_a_public_url() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    // A missing or wrong kind of token is a configuration error, said before anything starts.
    for token in [None, Some("xoxb-a-bot-token")] {
        let mut cmd = sb.cmd(&["serve", "--socket-mode", "--workflows", "wf"]);
        cmd.env_remove("SLACK_SIGNING_SECRET")
            .env_remove("SLACK_APP_TOKEN");
        if let Some(t) = token {
            cmd.env("SLACK_APP_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{token:?}: {}",
            crate::support::stderr(&out)
        );
        assert!(crate::support::stderr(&out).contains("SLACK_APP_TOKEN"));
    }
    let s = serve_with(&sb, &["U1"], |cmd| {
        cmd.arg("--socket-mode")
            .env_remove("SLACK_SIGNING_SECRET")
            .env("SLACK_APP_TOKEN", "xapp-1-test-app-token")
            .env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url)
            .env("LANDFALL_LOG", "trace");
    });
    wait_until("the WebSocket", Duration::from_secs(30), || {
        api.connections() > 0
    });
    let opened = api
        .calls()
        .into_iter()
        .find(|c| c.method == "apps.connections.open")
        .expect("apps.connections.open was called");
    assert_eq!(opened.authorization, "Bearer xapp-1-test-app-token");
    // No signing secret: the HTTP Slack routes are off, /healthz still answers.
    assert_eq!(post(&s, "/slack/commands", "x", None, None).0, 404);
    assert_eq!(
        ureq::get(&format!("{}/healthz", s.base))
            .call()
            .unwrap()
            .status(),
        200
    );

    let ack = |id: &str| {
        let mut got = None;
        wait_until(&format!("the ack of {id}"), Duration::from_secs(30), || {
            got = api.ack(id);
            got.is_some()
        });
        got.unwrap()
    };
    // A slash command in envelope `id`; the ack's ephemeral text is the answer.
    let command = |id: &str, user: &str, text: &str, trigger: &str| {
        api.push(envelope(id, "slash_commands", slash(user, text, trigger)));
        let a = ack(id);
        assert_eq!(a["payload"]["response_type"], "ephemeral", "{a}");
        a["payload"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let started = command("e1", "U1", "hello alice", "t1");
    assert!(started.contains("Started hello as"), "{started}");
    // Slack redelivers the same command in another envelope: acknowledged, nothing started.
    let again = command("e2", "U1", "hello alice", "t1");
    assert!(again.contains("Already on it"), "{again}");
    // Not allowed: refused like over HTTP.
    let refused = command("e3", "U2", "hello eve", "t3");
    assert!(refused.starts_with("Sorry"), "{refused}");
    // An envelope that cannot be read is acknowledged (Slack would only resend it) and its
    // body, here with Slack's verification token, stays out of the logs.
    api.push(envelope(
        "e0",
        "slash_commands",
        serde_json::json!({ "token": "verification-token-xyz", "text": "hello" }),
    ));
    ack("e0");
    wait_until("the run", Duration::from_secs(60), || {
        runs(&sb)
            .first()
            .is_some_and(|r| r["status"] == "succeeded")
    });
    assert_eq!(runs(&sb).len(), 1);
    assert_eq!(runs(&sb)[0]["actor"], "U1");

    // A mention through the Events API envelope: answered in its thread.
    api.push(envelope(
        "e4",
        "events_api",
        serde_json::json!({
            "token": "unused", "team_id": "T1", "api_app_id": "A0LANDFALL", "type": "event_callback",
            "event_id": "Ev4", "event_time": 1_700_000_000,
            "event": { "type": "app_mention", "user": "U1", "channel": "C7", "text": "<@UBOT> help",
                       "ts": "1699999999.000004", "event_ts": "1699999999.000004" },
        }),
    ));
    ack("e4");
    wait_until("the answer to the mention", Duration::from_secs(30), || {
        api.calls().iter().any(|c| {
            c.body["channel"] == "C7"
                && c.body["thread_ts"] == "1699999999.000004"
                && c.body["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("/landfall hello NAME")
        })
    });

    // An approval button clicked in the run's thread.
    command("e5", "U1", "ship", "t5");
    let run = runs(&sb)
        .iter()
        .find(|r| r["workflow"] == "gated")
        .and_then(|r| r["run_id"].as_str().map(str::to_string))
        .expect("the gated run");
    wait_until("the approval to wait", Duration::from_secs(60), || {
        node(&sb.json(&["status", &run, "--json"]), "approve")["status"] == "waiting"
    });
    api.push(envelope(
        "e6",
        "interactive",
        serde_json::json!({
            "type": "block_actions", "api_app_id": "A0LANDFALL", "trigger_id": "t6",
            "team": { "id": "T1", "domain": "acme" },
            "user": { "id": "U1", "team_id": "T1" },
            "channel": { "id": "C1", "name": "ops" },
            "container": { "type": "message", "message_ts": "1700000000.000009", "channel_id": "C1" },
            "actions": [{
                "type": "button", "action_id": "approve", "block_id": "decide",
                "value": serde_json::json!({ "run": run, "node": "approve", "digest": "d-42" }).to_string(),
                "action_ts": "1700000001.000001",
            }],
        }),
    ));
    ack("e6");
    wait_until(
        "the approved run to finish",
        Duration::from_secs(60),
        || sb.json(&["status", &run, "--json"])["status"] == "succeeded",
    );
    let doc = sb.json(&["status", &run, "--json"]);
    assert_eq!(node(&doc, "approve")["outputs"]["by"], "U1");

    let log = s.log.lock().unwrap().join("\n");
    assert!(log.contains("connected to Slack (socket mode)"), "{log}");
    assert!(
        !log.contains("xapp-1-test-app-token")
            && !log.contains("xoxb-test-token")
            && !log.contains("verification-token-xyz"),
        "a token was logged: {log}"
    );
    assert!(log.contains("could not be read"), "{log}");
}

#[test]
fn stopping_the_server_interrupts_its_runs_so_they_resume() {
    let sb = Sandbox::new();
    workflows(&sb);
    sb.write(
        "wf/slow.yaml",
        r#"
name: slow
trigger:
  slack: { command: slow }
steps:
  - id: nap
    uses: wait
    with: { duration: 60s }
"#,
    );
    let api = crate::slack_api::SlackApi::start(0);
    let mut s = serve_with(&sb, &["U1"], |cmd| {
        cmd.env("LANDFALL_GRACE", "300ms")
            .env("SLACK_BOT_TOKEN", "xoxb-test-token")
            .env("SLACK_API_URL", &api.url);
    });
    let (_, reply) = signed(&s, "/slack/commands", &command("U1", "slow", "t1"));
    assert!(reply.contains("Started slow"), "{reply}");
    let run = runs(&sb)[0]["run_id"].as_str().unwrap().to_string();
    wait_until("the nap to start", Duration::from_secs(60), || {
        node(&sb.json(&["status", &run, "--json"]), "nap")["status"] == "running"
    });
    // A slow Slack: the thread's last messages take a while; stopping waits for them.
    api.slow_down(Duration::from_millis(700));
    let term = std::process::Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut code = None;
    wait_until("the server to stop", Duration::from_secs(30), || {
        code = s.child.try_wait().unwrap().map(|st| st.code());
        code.is_some()
    });
    assert_eq!(code, Some(Some(0)));
    let doc = sb.json(&["status", &run, "--json"]);
    assert_eq!(doc["status"], "interrupted", "{doc:#}");
    assert_eq!(
        node(&doc, "nap")["status"],
        "pending",
        "cut off, to run again"
    );
    let audit = sb.json(&["audit", &run, "--json"]);
    let kinds: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"run_interrupt_requested"), "{kinds:?}");
    assert_eq!(
        audit.as_array().unwrap().last().unwrap()["details"]["status"],
        "interrupted"
    );
    let log = s.log.lock().unwrap().join("\n");
    assert!(log.contains("interrupting 1 run(s)"), "{log}");
    // The run's thread heard the outcome before the process ended.
    let calls = api.calls();
    assert!(
        calls.iter().any(|c| c.body["text"]
            .as_str()
            .is_some_and(|t| t.contains(&run) && t.contains("interrupted"))),
        "{calls:#?}"
    );
}

/// `/landfall plan hello world` plans (reading only) and posts the plan with an Apply button;
/// the button, clicked by someone the workflow lets start it, starts a run that applies that
/// stored plan; a button whose digest is not the plan's, or a person not allowed, starts
/// nothing.
#[test]
fn a_plan_from_slack_is_applied_with_its_button() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    // A step that cannot plan: what it changes is known only when it runs.
    sb.write(
        "wf/touch.yaml",
        r#"
name: touch
inputs:
  name: { type: string }
trigger:
  slack: { command: touch, args: [name] }
steps:
  - { id: write, uses: exec, with: { argv: [touch, "{{ inputs.name }}"] } }
"#,
    );
    let s = serve_with(&sb, &["U1"], |cmd| {
        cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token-000000")
            .env("SLACK_API_URL", &api.url);
    });
    let (_, reply) = signed(
        &s,
        "/slack/commands",
        &command("U1", "plan touch planned", "t1"),
    );
    assert!(reply.contains("Planning touch"), "{reply}");
    let button = || {
        api.calls().iter().find_map(|c| {
            c.body["blocks"]
                .as_array()?
                .iter()
                .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
                .find(|e| e["action_id"] == "apply")
                .and_then(|e| e["value"].as_str().map(str::to_string))
        })
    };
    wait_until(
        "the plan with its Apply button",
        Duration::from_secs(30),
        || button().is_some(),
    );
    let value: Value = serde_json::from_str(&button().unwrap()).unwrap();
    let plan_id = value["plan"].as_str().unwrap().to_string();
    assert!(runs(&sb).is_empty(), "planning started no run");
    assert!(!sb.path("planned").exists(), "planning ran nothing");
    let click = |user: &str, value: &Value| {
        let payload = serde_json::json!({
            "type": "block_actions", "user": { "id": user }, "channel": { "id": "C1" },
            "actions": [{ "action_id": "apply", "value": value.to_string() }],
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        assert_eq!(signed(&s, "/slack/interactions", &body).0, 200);
    };
    let said = |what: &str| {
        api.calls()
            .iter()
            .any(|c| c.body["text"].as_str().unwrap_or_default().contains(what))
    };
    // A stale digest, then someone not allowed: nothing starts.
    click(
        "U1",
        &serde_json::json!({ "plan": plan_id, "digest": "d-old" }),
    );
    wait_until(
        "the outdated button refused",
        Duration::from_secs(30),
        || said("This plan is outdated"),
    );
    click("U9", &value);
    wait_until("the outsider refused", Duration::from_secs(30), || {
        said("you are not allowed to apply plans")
    });
    assert!(runs(&sb).is_empty(), "{:#?}", runs(&sb));
    // The button as posted: a run applying exactly that plan.
    click("U1", &value);
    wait_until("the applied run", Duration::from_secs(60), || {
        runs(&sb).iter().any(|r| r["status"] == "succeeded")
    });
    let run = runs(&sb)[0]["run_id"].as_str().unwrap().to_string();
    assert!(said(&format!("Applying plan `{plan_id}` as `{run}`")));
    let audit = sb.json(&["audit", &run, "--json"]);
    let created = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "run_created")
        .unwrap();
    assert_eq!(created["details"]["plan_id"], plan_id.as_str());
    assert_eq!(created["actor"], "U1");
    assert!(sb.path("planned").exists(), "the applied run ran");
}

/// What Slack users type comes back as text only: a mention asking for an unknown command with
/// `@channel` and a disguised link in it is answered without either (Slack sends typed `<`
/// as `&lt;`, which routing reads back as `<`), and a long mention is not posted back whole.
#[test]
fn echoed_words_can_neither_ping_nor_link() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_with(&sb, &["U1"], |cmd| {
        cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token-000000")
            .env("SLACK_API_URL", &api.url);
    });
    let mention = |id: &str, text: &str| {
        let event = serde_json::json!({
            "type": "event_callback", "event_id": id,
            "event": { "type": "app_mention", "user": "U1", "channel": "C7", "ts": "1699999999.000001", "text": text },
        })
        .to_string();
        assert_eq!(signed(&s, "/slack/events", &event).0, 200);
    };
    mention(
        "Ev1",
        "<@UBOT> x &lt;!channel&gt; <https://evil.example|Approve deploy> &lt;https://evil.example|Approve&gt;",
    );
    // As long as this server's body limit (4 KiB here) lets it be.
    mention("Ev2", &format!("<@UBOT> {}", "y".repeat(3_500)));
    wait_until("both answers", Duration::from_secs(30), || {
        api.calls()
            .iter()
            .filter(|c| {
                c.body["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("I don't know")
            })
            .count()
            == 2
    });
    for c in api.calls() {
        let text = c.body["text"].as_str().unwrap_or_default();
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(!text.contains("<https://"), "{text}");
        assert!(
            !text.contains(&"y".repeat(200)),
            "{} bytes posted back",
            text.len()
        );
    }
    // The slash command's answer (the HTTP response) is escaped the same way.
    let (_, reply) = signed(
        &s,
        "/slack/commands",
        &command("U1", "approve &lt;!here&gt; x", "t9"),
    );
    assert!(!reply.contains("<!here>"), "{reply}");
}

/// Requests Slack sends without an id are each acted on (none is "already on it" for want of
/// an id), and a mention made inside a thread is answered in that thread (its parent's `ts`).
#[test]
fn requests_without_ids_are_each_answered_and_thread_mentions_stay_in_their_thread() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_with(&sb, &["U1"], |cmd| {
        cmd.env("SLACK_BOT_TOKEN", "xoxb-test-token-000000")
            .env("SLACK_API_URL", &api.url);
    });
    let without_id = serde_urlencoded::to_string([
        ("command", "/landfall"),
        ("text", "runs"),
        ("user_id", "U1"),
        ("channel_id", "C1"),
    ])
    .unwrap();
    for _ in 0..3 {
        let (code, reply) = signed(&s, "/slack/commands", &without_id);
        assert_eq!(code, 200);
        assert!(reply.contains("No runs yet"), "{reply}");
    }
    let event = serde_json::json!({
        "type": "event_callback", "event_id": "Ev7",
        "event": { "type": "app_mention", "user": "U1", "channel": "C7", "ts": "1700000005.000200",
                   "thread_ts": "1700000001.000100", "text": "<@UBOT> help" },
    })
    .to_string();
    assert_eq!(signed(&s, "/slack/events", &event).0, 200);
    wait_until("the answer in the thread", Duration::from_secs(30), || {
        api.calls()
            .iter()
            .any(|c| c.body["channel"] == "C7" && c.body["thread_ts"] == "1700000001.000100")
    });
}

/// `/landfall resume` of a run this server is executing changes nothing (before, it replaced
/// the run's entry in the live map and then removed it: the run could no longer be cancelled);
/// the run is still cancellable after.
#[test]
fn resuming_a_run_that_is_running_here_changes_nothing() {
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve(&sb, &["U1"]);
    let (_, reply) = signed(&s, "/slack/commands", &command("U1", "ship", "t1"));
    assert!(reply.contains("Started gated"), "{reply}");
    wait_until("the run to wait", Duration::from_secs(30), || {
        runs(&sb).first().is_some_and(|r| {
            let id = r["run_id"].as_str().unwrap_or_default();
            sb.json(&["status", id, "--json"])["nodes"][0]["status"] == "waiting"
        })
    });
    let run = runs(&sb)[0]["run_id"].as_str().unwrap().to_string();
    let (_, reply) = signed(
        &s,
        "/slack/commands",
        &command("U1", &format!("resume {run}"), "t2"),
    );
    assert_eq!(reply, format!("`{run}` is already running here."));
    let (_, reply) = signed(
        &s,
        "/slack/commands",
        &command("U1", &format!("cancel {run}"), "t3"),
    );
    assert_eq!(reply, format!("Cancelling {run}."));
    wait_until("the run cancelled", Duration::from_secs(30), || {
        runs(&sb)[0]["status"] == "cancelled"
    });
}

/// A slash command that is not this app's (`/hello-world` sent to our endpoint) is refused and
/// audited, never read as `/landfall`.
#[test]
fn another_slash_command_is_refused() {
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve(&sb, &["U1"]);
    let other = serde_urlencoded::to_string([
        ("command", "/hello-world"),
        ("text", "hello world"),
        ("user_id", "U1"),
        ("channel_id", "C1"),
        ("trigger_id", "t1"),
    ])
    .unwrap();
    let (code, reply) = signed(&s, "/slack/commands", &other);
    assert_eq!(code, 200);
    assert_eq!(reply, "This app answers `/landfall`, not `/hello-world`.");
    assert!(runs(&sb).is_empty());
    let audit = sb.json(&["audit", "-", "--json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "slack_command_refused"
                && e["details"]["command"] == "/hello-world"),
        "{audit:#}"
    );
    let (_, reply) = signed(&s, "/slack/commands", &command("U1", "hello world", "t2"));
    assert!(reply.contains("Started hello"), "{reply}");
}

/// With `slack.team_id` pinned, an install for another workspace is refused and nothing is
/// stored; one for the pinned workspace is kept.
#[test]
fn an_install_for_another_workspace_than_the_pinned_one_is_refused() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    workflows(&sb);
    let env = |cmd: &mut std::process::Command| {
        oauth_app(cmd, &api.url);
        cmd.env("LANDFALL_SLACK__TEAM_ID", "T0PINNED");
    };
    let s = serve_with(&sb, &["U1"], env);
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let install = |code: &str| -> (u16, String) {
        let mut cmd = sb.cmd(&["slack", "install-link", "--json", "--base-url", &s.base]);
        env(&mut cmd);
        let v: Value = serde_json::from_slice(&cmd.output().unwrap().stdout).unwrap();
        let r = agent.get(v["url"].as_str().unwrap()).call().unwrap();
        let cookie = r
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let location = r.header("location").unwrap().to_string();
        let state = location
            .split("state=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string();
        match agent
            .get(&format!(
                "{}/slack/oauth/callback?code={code}&state={state}",
                s.base
            ))
            .set("Cookie", &cookie)
            .call()
        {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{e}"),
        }
    };
    let (code, text) = install("code-for-T0OUTSIDER");
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("serves workspace T0PINNED"), "{text}");
    let audit = sb.json(&["audit", "-", "--json"]);
    assert!(!audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "slack_installed"));
    let (code, text) = install("code-for-T0PINNED");
    assert_eq!(code, 200, "{text}");
}
