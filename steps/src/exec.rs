//! `exec`: runs a program (never through a shell) in a process group of its own.
//!
//! A step's processes must end with its attempt, whatever ends the attempt, or a resumed run
//! starts the program again while the first copy still works. Four things see to it:
//!
//! - the program leads a new process group, and the group (the program's own children too) is
//!   killed when the attempt ends for any reason: exit, time-out, cancel, the engine dropping
//!   the attempt on shutdown ([`Group`]'s `Drop`);
//! - on Linux the program gets a parent-death signal (SIGKILL), so a `kill -9` of the engine
//!   kills it as well. Linux sends it when the *thread* that forked the child ends, not the
//!   process, so children are forked by one thread that lives as long as the process
//!   ([`spawner`]), never by a runtime thread that may be retired;
//! - before the program is started, the node's progress says so (durably: a `kill -9` of the
//!   engine at any instant after the start finds it on resume), and the next attempt (in this
//!   process or after a resume) first kills what is left of the earlier one: on Linux every
//!   process carrying the node's `LANDFALL_RUN_ID` and `LANDFALL_NODE_ID` in its environment
//!   (a grandchild the death signal does not reach), and the process groups they are in;
//! - output is read as it comes and only its tail is kept (`max_output`), so a chatty program
//!   cannot fill the engine's memory or the state file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytesize::ByteSize;
use landfall_engine::ConfigProblem;
use landfall_engine::Path;
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

/// `exec`: runs a program (never through a shell).
pub(crate) struct Exec;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecConfig {
    /// Program and arguments, e.g. `["aws", "sts", "get-caller-identity"]`. No shell is
    /// involved: quoting, globs and `$VARS` are not interpreted.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: Landfall's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Time limit; the program and everything it started are killed then, and the attempt is
    /// a transient failure.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// How much of stdout and of stderr to keep, each (default `1MiB`): beyond it the
    /// beginning is dropped, the tail kept, and the output says how much was cut.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_output: Option<ByteSize>,
}

/// The exit code meaning "try again later" (sysexits' EX_TEMPFAIL).
pub(crate) const EX_TEMPFAIL: i32 = 75;
/// The default of `max_output`.
pub(crate) const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;
const STDERR_TAIL: usize = 2000;
/// How long output may still arrive after the program exited and its group was killed: only
/// a process that left the group (`setsid`) can hold the pipe open longer.
const DRAIN: Duration = Duration::from_secs(2);
/// The progress key under which the attempt's process group is saved.
const GROUP_KEY: &str = "process-group";

pub(crate) fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The tail of one output stream.
#[derive(Debug, Default, PartialEq)]
struct Captured {
    kept: Vec<u8>,
    /// Bytes read in all, kept or not.
    total: u64,
}

impl Captured {
    fn cut(&self) -> u64 {
        self.total - self.kept.len() as u64
    }

    /// The text, headed by what was cut, if anything.
    fn text(&self, stream: &str) -> String {
        let body = String::from_utf8_lossy(&self.kept);
        match self.cut() {
            0 => body.into_owned(),
            cut => format!(
                "[landfall: the first {cut} bytes of {stream} were cut; the last {} are kept]\n{body}",
                self.kept.len()
            ),
        }
    }
}

/// Reads `r` to its end, keeping the last `cap` bytes. Memory stays under 2 × `cap` + a buffer.
async fn capture(mut r: impl AsyncRead + Unpin, cap: usize) -> Captured {
    let mut c = Captured::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                c.total += n as u64;
                c.kept.extend_from_slice(&buf[..n]);
                if c.kept.len() > cap.saturating_mul(2).max(buf.len()) {
                    let drop = c.kept.len() - cap;
                    c.kept.drain(..drop);
                }
            }
        }
    }
    if c.kept.len() > cap {
        let drop = c.kept.len() - cap;
        c.kept.drain(..drop);
    }
    c
}

#[async_trait]
impl Plugin for Exec {
    const NAME: &'static str = "exec";
    const SUMMARY: &'static str =
        "Run a program; JSON-object stdout becomes the outputs; exit 75 or a time-out retries";
    type Config = ExecConfig;

    fn validate(c: &ExecConfig) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if c.argv.is_empty() || c.argv[0].is_empty() {
            problems.push(ConfigProblem {
                path: Path::root().key("argv"),
                message: "argv needs at least the program to run".into(),
            });
        }
        if c.max_output.is_some_and(|m| m.as_u64() == 0) {
            problems.push(ConfigProblem {
                path: Path::root().key("max_output"),
                message: "max_output must be more than 0 bytes (e.g. `64KiB`)".into(),
            });
        }
        problems
    }

    async fn run(&self, c: ExecConfig, ctx: StepContext) -> Result<Value, StepError> {
        if ctx.saved_progress(GROUP_KEY).is_some() {
            // An earlier attempt of this node started a program; what survives of it (the
            // engine was killed, or a grandchild ignored the group kill) ends first.
            let left = group::end_leftovers(&ctx.run_id, &ctx.node_id).await;
            if left > 0 {
                ctx.warn(format!(
                    "killed {left} process(es) left by an earlier attempt of this step"
                ));
            }
        }
        let cap = usize::try_from(c.max_output.map_or(DEFAULT_MAX_OUTPUT, |m| m.as_u64()))
            .unwrap_or(usize::MAX);
        let mut cmd = tokio::process::Command::new(&c.argv[0]);
        cmd.args(&c.argv[1..])
            .envs(&c.env)
            .env("LANDFALL_RUN_ID", &*ctx.run_id)
            .env("LANDFALL_NODE_ID", &*ctx.node_id)
            .env("LANDFALL_ATTEMPT", ctx.attempt.to_string())
            .env("LANDFALL_IDEMPOTENCY_KEY", ctx.idempotency_key())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &c.cwd {
            cmd.current_dir(dir);
        }
        group::prepare(&mut cmd);
        // Saved before the start, not after: the program runs at once, and a kill of the
        // engine before a later save would leave its leftovers unlooked-for on resume.
        ctx.save_progress(GROUP_KEY, json!({ "attempt": ctx.attempt }))
            .await?;
        let mut child = group::spawn(cmd).await.map_err(|e| {
            let class = if e.kind() == std::io::ErrorKind::NotFound {
                format!("cannot run `{}`: program not found", c.argv[0])
            } else {
                format!("cannot run `{}`: {e}", c.argv[0])
            };
            StepError::permanent(class)
        })?;
        // From here on, however this attempt ends, the group dies with it.
        let group = group::Group::of(&child);
        let out = child.stdout.take().map(|s| tokio::spawn(capture(s, cap)));
        let err = child.stderr.take().map(|s| tokio::spawn(capture(s, cap)));
        let limit = c.timeout.unwrap_or(Duration::MAX);
        let status = tokio::select! {
            r = tokio::time::timeout(limit, child.wait()) => match r {
                Ok(s) => s,
                Err(_) => {
                    return Err(StepError::transient(format!(
                        "`{}` did not finish within {}",
                        c.argv[0],
                        humantime::format_duration(limit)
                    )))
                }
            },
            _ = ctx.cancel.cancelled() => return Err(StepError::transient("cancelled")),
        };
        // What the program left running in its group ends with it; that also closes the
        // pipes those processes held, so reading ends.
        group.kill();
        let collect = |h: Option<tokio::task::JoinHandle<Captured>>| async move {
            match h {
                Some(mut h) => match tokio::time::timeout(DRAIN, &mut h).await {
                    Ok(Ok(c)) => c,
                    _ => {
                        h.abort();
                        Captured::default()
                    }
                },
                None => Captured::default(),
            }
        };
        let (out, err) = tokio::join!(collect(out), collect(err));
        let status = status.map_err(|e| {
            StepError::transient(format!("waiting for `{}` failed: {e}", c.argv[0]))
        })?;
        let stderr = err.text("stderr");
        match status.code() {
            Some(0) => Ok(outputs(&out)),
            Some(EX_TEMPFAIL) => Err(StepError::transient(format!(
                "`{}` asked to be retried (exit 75): {}",
                c.argv[0],
                tail(stderr.trim(), STDERR_TAIL)
            ))),
            code => Err(StepError::permanent(format!(
                "`{}` failed ({}): {}",
                c.argv[0],
                code.map_or("killed by a signal".to_string(), |c| format!("exit {c}")),
                tail(stderr.trim(), STDERR_TAIL)
            ))
            .with_context(json!({ "exit_code": code }))),
        }
    }
}

/// A JSON object on stdout is the outputs; anything else (or a cut object) is kept as text.
fn outputs(out: &Captured) -> Value {
    if out.cut() == 0 {
        if let Ok(v @ Value::Object(_)) =
            serde_json::from_str::<Value>(String::from_utf8_lossy(&out.kept).trim())
        {
            return v;
        }
    }
    let mut v = json!({ "stdout": out.text("stdout") });
    if out.cut() > 0 {
        v["stdout_cut_bytes"] = json!(out.cut());
    }
    v
}

#[cfg(unix)]
mod group {
    use std::io;
    use std::sync::mpsc;
    use std::sync::OnceLock;
    use std::time::Duration;

    use rustix::process::{kill_process, kill_process_group, Pid, Signal};

    /// The process group of one attempt's program, killed when this is dropped.
    pub(super) struct Group(Option<Pid>);

    impl Group {
        pub(super) fn of(child: &tokio::process::Child) -> Self {
            // The child leads its group (process_group(0)), so the group id is its pid.
            Group(child.id().and_then(|id| Pid::from_raw(id as i32)))
        }

        pub(super) fn kill(&self) {
            if let Some(pgid) = self.0 {
                // ESRCH (the group is gone) is the usual answer and fine.
                let _ = kill_process_group(pgid, Signal::KILL);
            }
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            self.kill();
        }
    }

    pub(super) fn prepare(cmd: &mut tokio::process::Command) {
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = rustix::process::getpid();
            // SAFETY: the closure runs between fork and exec; it makes two raw system calls
            // (prctl, getppid) and allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                    // The engine may have died between fork and prctl: then nobody sends the
                    // signal, and the program must not start.
                    if rustix::process::getppid() != Some(parent) {
                        return Err(io::Error::other("landfall exited while starting it"));
                    }
                    Ok(())
                });
            }
        }
    }

    type Job = (
        tokio::process::Command,
        tokio::runtime::Handle,
        tokio::sync::oneshot::Sender<io::Result<tokio::process::Child>>,
    );

    /// The thread that forks every child: it lives as long as the process, so the
    /// parent-death signal fires only when the engine dies.
    fn spawner() -> Option<&'static mpsc::Sender<Job>> {
        static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
        SPAWNER
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name("landfall-exec-spawner".into())
                    .spawn(move || {
                        for (mut cmd, handle, reply) in rx {
                            let _rt = handle.enter();
                            let _ = reply.send(cmd.spawn());
                        }
                    })
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }

    pub(super) async fn spawn(
        mut cmd: tokio::process::Command,
    ) -> io::Result<tokio::process::Child> {
        let Some(tx) = spawner() else {
            return Err(io::Error::other(
                "cannot start the thread that starts programs",
            ));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if let Err(mpsc::SendError((c, _, _))) =
            tx.send((cmd, tokio::runtime::Handle::current(), reply))
        {
            cmd = c;
            return cmd.spawn();
        }
        answer
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the thread that starts programs ended")))
    }

    /// Kills every process an earlier attempt of this node left behind, and the process
    /// groups they are in; returns how many there were.
    pub(super) async fn end_leftovers(run_id: &str, node_id: &str) -> usize {
        let run = format!("LANDFALL_RUN_ID={run_id}");
        let node = format!("LANDFALL_NODE_ID={node_id}");
        let mut killed = 0;
        for round in 0..50 {
            let found = marked(&run, &node);
            if found.is_empty() {
                break;
            }
            if round == 0 {
                killed = found.len();
            }
            // Never our own group: a leftover that joined it (or a process caught between
            // fork and its own `setsid`) would take the engine down with it.
            let own = rustix::process::getpgid(None).ok();
            for (pid, pgid) in found {
                if Some(pgid) != own {
                    let _ = kill_process_group(pgid, Signal::KILL);
                }
                let _ = kill_process(pid, Signal::KILL);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        killed
    }

    /// Live processes (pid, process group) whose environment holds both markers.
    #[cfg(target_os = "linux")]
    fn marked(run: &str, node: &str) -> Vec<(Pid, Pid)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let me = std::process::id();
        let mut out = Vec::new();
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let has = |m: &str| env.split(|b| *b == 0).any(|kv| kv == m.as_bytes());
            if !(has(run) && has(node)) {
                continue;
            }
            let Some(pid) = Pid::from_raw(pid as i32) else {
                continue;
            };
            if let Ok(pgid) = rustix::process::getpgid(Some(pid)) {
                out.push((pid, pgid));
            }
        }
        out
    }

    /// Without /proc the environment cannot be read: only the death signal and the group kill
    /// at the end of each attempt apply.
    #[cfg(not(target_os = "linux"))]
    fn marked(_run: &str, _node: &str) -> Vec<(Pid, Pid)> {
        Vec::new()
    }
}

#[cfg(not(unix))]
mod group {
    use std::io;

    pub struct Group;

    impl Group {
        pub fn of(_child: &tokio::process::Child) -> Self {
            Group
        }
        pub fn kill(&self) {}
    }

    pub fn prepare(_cmd: &mut tokio::process::Command) {}

    pub async fn spawn(mut cmd: tokio::process::Command) -> io::Result<tokio::process::Child> {
        cmd.spawn()
    }

    pub async fn end_leftovers(_run_id: &str, _node_id: &str) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_engine::ErrorClass;

    fn exec(argv: &[&str]) -> ExecConfig {
        ExecConfig {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
            timeout: None,
            max_output: None,
        }
    }

    #[tokio::test]
    async fn exec_json_stdout_becomes_outputs() {
        let out = Exec
            .run(
                exec(&["sh", "-c", "echo '{\"a\": 1}'"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"a": 1}));
        let out = Exec
            .run(exec(&["echo", "hi"]), StepContext::detached("x"))
            .await
            .unwrap();
        assert_eq!(out, json!({"stdout": "hi\n"}));
    }

    #[tokio::test]
    async fn exec_exit_codes_map_to_classes() {
        let e = Exec
            .run(
                exec(&["sh", "-c", "echo busy >&2; exit 75"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
        let e = Exec
            .run(
                exec(&["sh", "-c", "echo boom >&2; exit 3"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(
            e.message.contains("exit 3") && e.message.contains("boom"),
            "{}",
            e.message
        );
        let e = Exec
            .run(
                exec(&["no-such-program-landfall"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
    }

    #[tokio::test]
    async fn exec_time_out_is_transient() {
        let mut c = exec(&["sleep", "5"]);
        c.timeout = Some(Duration::from_millis(100));
        let e = Exec.run(c, StepContext::detached("x")).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
    }

    #[tokio::test]
    async fn exec_never_uses_a_shell() {
        let out = Exec
            .run(
                exec(&["echo", "$HOME;", "`id`"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"stdout": "$HOME; `id`\n"}));
    }

    /// Whether a process with this pid is alive (not a zombie waiting for its parent).
    #[cfg(target_os = "linux")]
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }

    /// Waits a little for a process to go; a killed grandchild is reaped by init, not at once.
    #[cfg(target_os = "linux")]
    async fn gone(pid: u32) -> bool {
        for _ in 0..100 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The pid a script wrote to `path`, once it is there whole.
    #[cfg(target_os = "linux")]
    async fn pid_in(path: &std::path::Path) -> u32 {
        for _ in 0..500 {
            if let Some(pid) = std::fs::read_to_string(path)
                .ok()
                .filter(|s| s.ends_with('\n'))
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no pid in {}", path.display());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_time_out_kills_the_programs_children_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let mut c = exec(&["sh", "-c", &script]);
        c.timeout = Some(Duration::from_millis(500));
        let e = Exec.run(c, StepContext::detached("x")).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
        let pid = pid_in(&pidfile).await;
        assert!(
            gone(pid).await,
            "the grandchild {pid} outlived the time-out"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_cancel_kills_the_group_and_an_exit_ends_what_the_program_left() {
        let dir = tempfile::tempdir().unwrap();
        // Cancelled while running: the attempt's future is dropped.
        let pidfile = dir.path().join("cancelled");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let ctx = StepContext::detached("x");
        let cancel = ctx.cancel.clone();
        let run = tokio::spawn(Exec.run(exec(&["sh", "-c", &script]), ctx));
        let pid = pid_in(&pidfile).await;
        cancel.cancel();
        let e = run.await.unwrap().unwrap_err();
        assert_eq!(e.message, "cancelled");
        assert!(gone(pid).await, "the cancelled step's child {pid} lives on");
        // Exits at once, leaving a background child that holds stdout open.
        let pidfile = dir.path().join("left");
        let script = format!("sleep 30 & echo $! > {}; echo done", pidfile.display());
        let out = Exec
            .run(exec(&["sh", "-c", &script]), StepContext::detached("x"))
            .await
            .unwrap();
        assert_eq!(out, json!({"stdout": "done\n"}));
        let pid = pid_in(&pidfile).await;
        assert!(
            gone(pid).await,
            "the background child {pid} outlived its step"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn leftovers_of_an_earlier_attempt_are_found_by_their_environment() {
        // A process that left the group (its own session), as a grandchild of a killed
        // engine would be found: by the run and node in its environment.
        let mut p = std::process::Command::new("setsid")
            .args(["sleep", "30"])
            .env("LANDFALL_RUN_ID", "run-leftover-test")
            .env("LANDFALL_NODE_ID", "node-a")
            .spawn()
            .unwrap();
        let pid = p.id();
        // Once it has its own session, as a leftover of an attempt would have its own group.
        let raw = rustix::process::Pid::from_raw(pid as i32).unwrap();
        for _ in 0..500 {
            if rustix::process::getpgid(Some(raw)).ok() == Some(raw) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(group::end_leftovers("run-leftover-test", "node-b").await, 0);
        assert_eq!(group::end_leftovers("run-leftover-test", "node-a").await, 1);
        let _ = p.wait();
        assert!(!alive(pid));
        assert_eq!(group::end_leftovers("run-leftover-test", "node-a").await, 0);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_leftover_in_the_engines_own_group_is_killed_alone() {
        // Without the guard, killing its group would kill this test (and cargo) too.
        let mut p = std::process::Command::new("sleep")
            .arg("30")
            .env("LANDFALL_RUN_ID", "run-own-group-test")
            .env("LANDFALL_NODE_ID", "n")
            .spawn()
            .unwrap();
        assert_eq!(group::end_leftovers("run-own-group-test", "n").await, 1);
        let _ = p.wait();
        assert!(!alive(p.id()));
    }

    #[tokio::test]
    async fn output_beyond_the_cap_keeps_the_tail_and_says_so() {
        let mut c = exec(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done",
        ]);
        c.max_output = Some(ByteSize::b(100));
        let out = Exec.run(c, StepContext::detached("x")).await.unwrap();
        let text = out["stdout"].as_str().unwrap();
        assert!(text.ends_with("line-2999\n"), "{text}");
        let total: u64 = (0..3000).map(|i| format!("line-{i}\n").len() as u64).sum();
        assert_eq!(out["stdout_cut_bytes"], json!(total - 100));
        assert!(
            text.starts_with(&format!(
                "[landfall: the first {} bytes of stdout were cut; the last 100 are kept]\n",
                total - 100
            )),
            "{text}"
        );
        // A cut JSON object is text, never half an object taken for outputs.
        let mut c = exec(&["sh", "-c", "echo '{\"a\": \"0123456789\"}'"]);
        c.max_output = Some(ByteSize::b(8));
        let out = Exec.run(c, StepContext::detached("x")).await.unwrap();
        assert!(out["stdout"].as_str().unwrap().ends_with("789\"}\n"));
    }

    #[tokio::test]
    async fn capture_keeps_exactly_the_last_bytes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let c = capture(&data[..], 1000).await;
        assert_eq!(c.total, 200_000);
        assert_eq!(c.kept, data[199_000..]);
        let c = capture(&data[..10], 1000).await;
        assert_eq!((c.kept.as_slice(), c.cut()), (&data[..10], 0));
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }

    #[test]
    fn a_zero_output_cap_is_refused() {
        let mut c = exec(&["true"]);
        c.max_output = Some(ByteSize::b(0));
        assert_eq!(Exec::validate(&c).len(), 1);
    }
}
