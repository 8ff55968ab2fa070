//! `landfall serve` under traffic it did not ask for: slow connections, a flood of forged
//! requests, bodies that never finish, and Slack's largest interaction payloads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::serve::{command, raw_http, serve_limited, signed, workflows, Server};
use crate::support::{wait_until, Sandbox};

fn addr(s: &Server) -> SocketAddr {
    s.base
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address")
}

/// Opens `n` connections from `from` (any 127.x address is this machine) that send half a
/// request's headers and then nothing.
fn slow_clients(
    rt: &tokio::runtime::Runtime,
    to: SocketAddr,
    from: [u8; 4],
    n: usize,
) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = rt
                .block_on(async {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.bind(SocketAddr::from((from, 0)))?;
                    sock.connect(to).await?.into_std()
                })
                .expect("a connection");
            s.set_nonblocking(false).unwrap();
            let _ = (&s).write_all(b"GET /healthz HTTP/1.1\r\nHost: landfall\r\n");
            s
        })
        .collect()
}

/// Whether the server closed a connection (a read says end of file or reset, not "nothing yet").
fn closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let r = match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    r
}

fn healthz(s: &Server) -> u16 {
    ureq::get(&format!("{}/healthz", s.base))
        .timeout(Duration::from_secs(10))
        .call()
        .map(|r| r.status())
        .unwrap_or_else(|e| panic!("/healthz: {e}"))
}

/// 1,000 slow connections from 20 addresses against a server admitting 300: the longest idle
/// ones make room, so `/healthz` and a signed command are answered while all 1,000 try to hold
/// a place; 100 from one address are cut to its cap of 64. The header time-out is a minute,
/// so it is not what lets the requests in. (How long they take is measured in BENCHMARKS.md.)
#[test]
fn slow_connections_cannot_keep_health_checks_or_commands_out() {
    let soft = rlimit::increase_nofile_limit(u64::MAX).expect("the open-file limit");
    assert!(
        soft >= 2_000,
        "this test opens 1,100 connections; raise `ulimit -n` (now {soft})"
    );
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_limited(&sb, &["U1"], None, |cmd| {
        cmd.env("LANDFALL_SERVE__MAX_CONNECTIONS", "300")
            .env("LANDFALL_SERVE__HEADER_READ_TIMEOUT", "60s");
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let to = addr(&s);
    let mut slow = Vec::new();
    for peer in 2..22u8 {
        slow.extend(slow_clients(&rt, to, [127, 0, 0, peer], 50));
    }
    let greedy = slow_clients(&rt, to, [127, 0, 0, 30], 100);

    assert_eq!(
        healthz(&s),
        200,
        "answered with 1,100 slow connections open"
    );
    let (code, help) = signed(&s, "/slack/commands", &command("U1", "help", "t-slow"));
    assert_eq!(code, 200, "{help}");
    assert!(help.contains("/landfall hello"), "{help}");

    wait_until(
        "the longest idle connections to be closed",
        Duration::from_secs(30),
        || slow.iter().filter(|c| closed(c)).count() >= 1_000 - 300,
    );
    wait_until(
        "one address to be held to its cap",
        Duration::from_secs(30),
        || greedy.iter().filter(|c| closed(c)).count() >= 100 - 64,
    );
    assert!(
        greedy.iter().filter(|c| !closed(c)).count() > 0,
        "a peer under its cap keeps its connections"
    );
}

/// 10,000 forged requests from several connections: each is refused 401, and the audit log
/// gains one summary per period (count, reason, address), not 10,000 entries.
#[test]
fn a_flood_of_forged_requests_is_counted_not_logged_one_by_one() {
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_limited(&sb, &["U1"], None, |_| {});
    let state = sb.path(".landfall/state.redb");
    wait_until("the state file", Duration::from_secs(30), || state.exists());
    let before = std::fs::metadata(&state).unwrap().len();
    let body = command("U1", "hello world", "");
    std::thread::scope(|scope| {
        for t in 0..4 {
            let url = format!("{}/slack/commands", s.base);
            let body = body.clone();
            scope.spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                for i in 0..2_500 {
                    let r = agent
                        .post(&url)
                        .set("X-Slack-Request-Timestamp", &crate::serve::now())
                        .set("X-Slack-Signature", &format!("v0={t:02}{i:062}"))
                        .send_string(&body);
                    assert!(matches!(r, Err(ureq::Error::Status(401, _))), "{r:?}");
                }
            });
        }
    });
    let total = || -> u64 {
        sb.json(&["audit", "-", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "slack_requests_refused")
            .map(|e| e["details"]["total"].as_u64().unwrap_or(0))
            .sum()
    };
    wait_until(
        "the summaries of 10,000 refusals",
        Duration::from_secs(60),
        || total() == 10_000,
    );
    let audit = sb.json(&["audit", "-", "--json"]);
    let entries = audit.as_array().unwrap().len();
    assert!(entries < 20, "{entries} audit entries for one flood");
    let grown = std::fs::metadata(&state).unwrap().len() - before;
    assert!(grown < 100 * 1024, "the state file grew by {grown} bytes");
    let first = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "slack_requests_refused")
        .unwrap();
    assert_eq!(
        first["details"]["refusals"][0]["reason"], "the signature does not match",
        "{first}"
    );
    assert_eq!(first["details"]["refusals"][0]["peer"], "127.0.0.1");
    assert_eq!(sb.run(&["audit", "-", "--verify"]).status.code(), Some(0));
}

/// A modal with option groups: Slack repeats the whole view in every click on it, so a
/// `block_actions` payload can be ~100 KB.
fn large_block_actions(run: &str) -> Value {
    let groups: Vec<Value> = (0..10)
        .map(|g| {
            serde_json::json!({
                "label": { "type": "plain_text", "text": format!("Group {g}") },
                "options": (0..30).map(|o| serde_json::json!({
                    "text": { "type": "plain_text", "text": format!("Option {g}-{o} {}", "x".repeat(60)), "emoji": true },
                    "value": format!("value-{g}-{o}-{}", "y".repeat(120)),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "type": "block_actions",
        "user": { "id": "U1" },
        "channel": { "id": "C1" },
        "view": { "type": "modal", "blocks": [{ "type": "input", "element": { "type": "static_select", "option_groups": groups } }] },
        "actions": [{ "action_id": "approve", "value": serde_json::json!({ "run": run, "node": "approve", "digest": "d-0" }).to_string() }],
    })
}

/// Slack's largest interaction payloads get past the default body limit; a body that never
/// finishes is cut at the body time-out; both limits' refusals are audited.
#[test]
fn large_slack_payloads_are_admitted_and_stalled_bodies_cut() {
    let sb = Sandbox::new();
    workflows(&sb);
    let s = serve_limited(&sb, &["U1"], None, |cmd| {
        cmd.env("LANDFALL_SERVE__BODY_READ_TIMEOUT", "1s");
    });
    let body =
        serde_urlencoded::to_string([("payload", large_block_actions("r-none").to_string())])
            .unwrap();
    assert!(body.len() > 90 * 1024, "{} bytes", body.len());
    let (code, text) = signed(&s, "/slack/interactions", &body);
    assert_eq!(code, 200, "{text}");

    // Headers promising 100 bytes, then 10 and silence.
    let answer = raw_http(
        &s,
        b"POST /slack/commands HTTP/1.1\r\nHost: landfall\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Over the limit: refused on its Content-Length, before a byte of it is read.
    let answer = raw_http(
        &s,
        b"POST /slack/interactions HTTP/1.1\r\nHost: landfall\r\nContent-Length: 2000000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    wait_until("both refusals audited", Duration::from_secs(30), || {
        let audit = sb.json(&["audit", "-", "--json"]);
        let reasons: Vec<String> = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "slack_requests_refused")
            .flat_map(|e| {
                e["details"]["refusals"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
            .collect();
        reasons.iter().any(|r| r == "body not sent in time")
            && reasons.iter().any(|r| r == "body over the limit")
    });
}
