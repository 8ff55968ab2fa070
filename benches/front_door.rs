//! The front door under unwanted traffic, against the release `landfall serve` binary:
//! latency of `/healthz` and of a signed command with and without 1,000 slow connections
//! held open, and how much 10,000 forged requests grow the state file.
//!
//! `cargo bench --bench front_door` (results go to BENCHMARKS.md by hand).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-signing-secret";

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nofile`: the server's open-file limit (`ulimit -n`), else this process's.
fn start(dir: &std::path::Path, nofile: Option<u32>) -> Server {
    std::fs::create_dir_all(dir.join("wf")).unwrap();
    std::fs::write(
        dir.join("wf/hello.yaml"),
        "name: hello\ntrigger:\n  slack: { command: hello }\nsteps:\n  - id: greet\n    uses: log\n    with: { message: hi }\n",
    )
    .unwrap();
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("bash");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                .arg(env!("CARGO_BIN_EXE_landfall"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_landfall")),
    };
    let mut child = cmd
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workflows",
            "wf",
            "--allow-user",
            "U1",
        ])
        .current_dir(dir)
        .env("SLACK_SIGNING_SECRET", SECRET)
        .env("LANDFALL_SERVE__REFUSAL_SUMMARY_EVERY", "2s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap()
        .parse()
        .unwrap();
    Server { child, addr }
}

fn healthz(s: &Server) -> Duration {
    let t = Instant::now();
    let r = ureq::get(&format!("http://{}/healthz", s.addr))
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    t.elapsed()
}

fn command(s: &Server, i: usize) -> Duration {
    let body = serde_urlencoded::to_string([
        ("command", "/landfall"),
        ("text", "help"),
        ("user_id", "U1"),
        ("channel_id", "C1"),
        ("trigger_id", &format!("bench-{i}")),
    ])
    .unwrap();
    let ts = chrono::Utc::now().timestamp().to_string();
    let t = Instant::now();
    let r = ureq::post(&format!("http://{}/slack/commands", s.addr))
        .set("X-Slack-Request-Timestamp", &ts)
        .set(
            "X-Slack-Signature",
            &landfall::slack::signature::sign(SECRET, &ts, body.as_bytes()),
        )
        .timeout(Duration::from_secs(30))
        .send_string(&body)
        .unwrap();
    assert_eq!(r.status(), 200);
    t.elapsed()
}

/// p50, p99 and max in milliseconds.
fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 99) / 100]),
        ms(v[v.len() - 1]),
    )
}

fn measure(s: &Server, label: &str) {
    let h: Vec<Duration> = (0..300).map(|_| healthz(s)).collect();
    let c: Vec<Duration> = (0..100).map(|i| command(s, i)).collect();
    let (h50, h99, hmax) = stats(h);
    let (c50, c99, cmax) = stats(c);
    println!(
        "{label:<44} healthz p50 {h50:6.2} ms p99 {h99:6.2} ms max {hmax:6.2} ms | command p50 {c50:6.2} ms p99 {c99:6.2} ms max {cmax:6.2} ms"
    );
}

fn slow(rt: &tokio::runtime::Runtime, to: SocketAddr, peers: u8, each: usize) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for p in 0..peers {
        for _ in 0..each {
            let s = rt
                .block_on(async {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.bind(SocketAddr::from(([127, 0, 1, p + 2], 0)))?;
                    sock.connect(to).await?.into_std()
                })
                .unwrap();
            s.set_nonblocking(false).unwrap();
            let _ = (&s).write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            v.push(s);
        }
    }
    v
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        // The case: 300 idle connections against a server limited to 256 files.
        let dir = tempfile::tempdir().unwrap();
        let s = start(dir.path(), Some(256));
        measure(&s, "ulimit -n 256: no slow connections");
        let _held = slow(&rt, s.addr, 20, 15);
        std::thread::sleep(Duration::from_millis(500));
        measure(&s, "ulimit -n 256: 300 slow connections");
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), None);
    for i in 0..20 {
        healthz(&s);
        command(&s, 10_000 + i);
    }
    measure(&s, "no slow connections");
    {
        let _held = slow(&rt, s.addr, 1, 1000);
        std::thread::sleep(Duration::from_millis(500));
        measure(&s, "1,000 slow connections from one address");
    }
    {
        let _held = slow(&rt, s.addr, 20, 50);
        std::thread::sleep(Duration::from_millis(500));
        measure(&s, "1,000 slow connections from 20 addresses");
    }
    {
        let _held = slow(&rt, s.addr, 100, 15);
        std::thread::sleep(Duration::from_millis(500));
        measure(&s, "1,500 slow connections from 100 addresses");
    }

    let state = dir.path().join(".landfall/state.redb");
    std::thread::sleep(Duration::from_secs(3));
    let before = std::fs::metadata(&state).unwrap().len();
    let t = Instant::now();
    std::thread::scope(|scope| {
        for k in 0..4 {
            let url = format!("http://{}/slack/commands", s.addr);
            scope.spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                for i in 0..2_500 {
                    let r = agent
                        .post(&url)
                        .set("X-Slack-Request-Timestamp", "1700000000")
                        .set("X-Slack-Signature", &format!("v0={k:02}{i:062}"))
                        .send_string("command=/landfall&text=help");
                    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
                }
            });
        }
    });
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let after = std::fs::metadata(&state).unwrap().len();
    println!(
        "10,000 forged requests: {:.1} s ({:.0}/s), state file {} → {} bytes (+{} bytes)",
        took.as_secs_f64(),
        10_000.0 / took.as_secs_f64(),
        before,
        after,
        after.saturating_sub(before)
    );
}
