//! A sandbox per test: its own directory (and so its own `.landfall/state.redb`), and the
//! real `landfall` binary run in it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write fixture");
        p
    }

    /// Copies a file of the repository into the sandbox under the same name.
    pub(crate) fn copy(&self, repo_path: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(repo_path);
        let name = src.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&src).expect("read repo file");
        self.write(&name, &text)
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_landfall"));
        c.args(args).current_dir(self.dir.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("LANDFALL_") || k.starts_with("SLACK_") {
                c.env_remove(k);
            }
        }
        c.env("NO_COLOR", "1");
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run landfall")
    }

    pub(crate) fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn landfall")
    }

    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "landfall {args:?} did not print JSON ({e}); stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Waits (bounded) until `cond` holds.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub(crate) fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

pub(crate) fn node<'a>(doc: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    doc["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("no node {id} in {doc}"))
}

/// A moto server of this test's own, started by the project's script; stopped on drop.
pub(crate) struct Emulator {
    dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Emulator {
    pub(crate) fn start() -> Self {
        Self::start_with(true)
    }

    /// `managed_policies: false` skips loading AWS-managed IAM policies into every new
    /// account (much faster for tests that create many accounts and use no IAM).
    pub(crate) fn start_with(managed_policies: bool) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(
            root.join(".venv/bin/moto_server").exists(),
            "the AWS emulator is not installed: run `scripts/aws-emulator.sh setup` (scripts/test.sh does)"
        );
        // Built by `setup`; never from here (a cargo build inside `cargo test` waits on its lock).
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        assert!(
            target.join("debug/landfall-strict-aws").exists(),
            "the strict AWS layer is not built: run `scripts/aws-emulator.sh setup` (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(root.join("scripts/aws-emulator.sh"))
            .arg("start")
            .arg(dir.path())
            .env(
                "MOTO_IAM_LOAD_MANAGED_POLICIES",
                managed_policies.to_string(),
            )
            .output()
            .expect("run scripts/aws-emulator.sh");
        assert!(
            out.status.success(),
            "the emulator did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Emulator { dir, env }
    }

    pub(crate) fn endpoint(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "AWS_ENDPOINT_URL")
            .map(|(_, v)| v.clone())
            .expect("emulator endpoint")
    }

    /// Clears all emulated AWS state (moto's and the strict layer's bookkeeping).
    pub(crate) fn reset(&self) {
        ureq::post(&format!("{}/moto-api/reset", self.endpoint()))
            .call()
            .expect("reset the emulator");
    }

    /// Changes the strict layer's knobs (`{"fault_rate": 0.3}`, keys as `GET /strict-aws/knobs`).
    pub(crate) fn set_knobs(&self, knobs: serde_json::Value) {
        ureq::post(&format!("{}/strict-aws/knobs", self.endpoint()))
            .send_json(knobs)
            .expect("set the strict layer's knobs");
    }

    /// What the strict layer counted: calls per operation, faults injected, refusals per rule.
    pub(crate) fn stats(&self) -> serde_json::Value {
        ureq::get(&format!("{}/strict-aws/stats", self.endpoint()))
            .call()
            .expect("read the strict layer's stats")
            .into_json()
            .expect("stats are JSON")
    }

    /// Applies the emulator's environment to a `landfall` command.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        cmd.env_remove("AWS_PROFILE");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    pub(crate) async fn organizations(&self) -> aws_sdk_organizations::Client {
        let conf = aws_sdk_organizations::Config::builder()
            .behavior_version(aws_sdk_organizations::config::BehaviorVersion::latest())
            .region(aws_sdk_organizations::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_organizations::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        aws_sdk_organizations::Client::from_conf(conf)
    }
}

impl Emulator {
    /// Landfall's AWS access, pointed at this emulator, for running plugins in-process: the
    /// production client settings (call retries included), only the endpoint differs.
    pub(crate) fn landfall_aws(&self) -> landfall_steps::Aws {
        let conf = self
            .sdk_config()
            .into_builder()
            .retry_config(landfall_steps::call_retries())
            .build();
        landfall_steps::Aws::from_config(conf)
    }

    fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_iam::config::SharedCredentialsProvider::new(
                aws_sdk_iam::config::Credentials::new("testing", "testing", None, None, "test"),
            ))
            .build()
    }

    pub(crate) fn cloudformation(&self) -> aws_sdk_cloudformation::Client {
        aws_sdk_cloudformation::Client::new(&self.sdk_config())
    }

    /// IAM of the management account (the emulator's default credentials).
    pub(crate) fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk_config())
    }

    /// CloudFormation in a member account's region, through OrganizationAccountAccessRole,
    /// as an operator would look.
    pub(crate) async fn cloudformation_in(
        &self,
        account_id: &str,
        region: &str,
    ) -> aws_sdk_cloudformation::Client {
        let conf = self.sdk_config();
        let out = aws_sdk_sts::Client::new(&conf)
            .assume_role()
            .role_arn(format!(
                "arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole"
            ))
            .role_session_name("test")
            .send()
            .await
            .expect("assume role");
        let c = out.credentials().expect("credentials");
        let creds = aws_sdk_cloudformation::config::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "test",
        );
        aws_sdk_cloudformation::Client::from_conf(
            aws_sdk_cloudformation::config::Builder::from(&conf)
                .credentials_provider(creds)
                .region(aws_config::Region::new(region.to_string()))
                .build(),
        )
    }

    /// IAM inside a member account, through OrganizationAccountAccessRole, as an operator
    /// would check it.
    pub(crate) async fn iam_in(&self, account_id: &str) -> aws_sdk_iam::Client {
        let conf = self.sdk_config();
        let out = aws_sdk_sts::Client::new(&conf)
            .assume_role()
            .role_arn(format!(
                "arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole"
            ))
            .role_session_name("test")
            .send()
            .await
            .expect("assume role");
        let c = out.credentials().expect("credentials");
        let creds = aws_sdk_iam::config::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "test",
        );
        aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::config::Builder::from(&conf)
                .credentials_provider(creds)
                .build(),
        )
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let _ = Command::new(root.join("scripts/aws-emulator.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// The `inputs:` block of a workflow that takes a customer's requirements.
pub(crate) const REQUIREMENTS_INPUTS: &str = r#"
input_check: customer_requirements
inputs:
  customer: { type: string }
  display_name: { type: string }
  contact_email: { type: string }
  accounts: { type: array }
  regions: { type: array }
  network: { type: object }
  budget: { type: object, required: false }
  compliance: { type: array, default: [] }
  stakeholders: { type: object, default: {} }
  tags: { type: object, default: {} }
"#;
