//! What a Slack message asks for: a workflow with its inputs, a built-in command, or nothing
//! we know (answered with help). Pure: no Slack, no store; the server acts on the [`Intent`].
//!
//! A message is `[@landfall|/landfall] WORD ARG… [key=value…]`. `WORD` is a built-in (`help`,
//! `status [RUN]`, `runs`, `cancel RUN`, `resume RUN`, `approve RUN NODE`, `reject RUN NODE`,
//! `plan COMMAND ARG…`, `apply PLAN`) or a workflow's `trigger.slack.command`. Positional words fill the workflow's `args` in
//! order; the words `for`, `to`, `into`, `in`, `on`, `with` and `please` between them are
//! ignored, so `provision acme-baseline@latest for acme` reads naturally. Quotes group words
//! (`name="Acme Corp"`).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use landfall_engine::{InputSpec, SlackTrigger};
use landfall_steps::approval::Verdict;

/// A workflow that can be started from Slack.
#[derive(Debug, Clone)]
pub struct Route {
    /// The workflow's name.
    pub workflow: String,
    /// Its file, for starting it.
    pub file: std::path::PathBuf,
    pub trigger: SlackTrigger,
    pub inputs: IndexMap<String, InputSpec>,
    pub description: Option<String>,
}

/// What a message asks for. Every message gets exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Start `workflow` with these inputs (raw text, typed later like `--set`).
    Start {
        workflow: String,
        inputs: BTreeMap<String, String>,
    },
    Help,
    Runs,
    Status {
        run: Option<String>,
    },
    Cancel {
        run: String,
    },
    Resume {
        run: String,
    },
    /// Run a finished, failed run again where it failed (or from a step).
    Redrive {
        run: String,
        from: Option<String>,
    },
    Decide {
        run: String,
        node: String,
        verdict: Verdict,
    },
    /// Plan `workflow` with these inputs (`plan` followed by a workflow's command).
    Plan {
        workflow: String,
        inputs: BTreeMap<String, String>,
    },
    /// Apply a stored plan.
    Apply {
        plan: String,
    },
    /// Understood the command but not its arguments: say how to use it.
    Usage {
        command: String,
        usage: String,
        problem: String,
    },
    /// Not a command we know.
    Unknown {
        text: String,
    },
}

/// The routes of a set of compiled workflows; two files claiming one command is an error
/// naming both.
pub fn routes(
    workflows: &[(std::path::PathBuf, landfall_engine::Workflow)],
) -> Result<Vec<Route>, String> {
    let mut out: Vec<Route> = Vec::new();
    for (file, wf) in workflows {
        let Some(t) = &wf.slack else { continue };
        if let Some(other) = out.iter().find(|r| r.trigger.command == t.command) {
            return Err(format!(
                "`/landfall {}` is claimed by both {} and {}",
                t.command,
                other.file.display(),
                file.display()
            ));
        }
        out.push(Route {
            workflow: wf.name.clone(),
            file: file.clone(),
            trigger: t.clone(),
            inputs: wf.inputs.clone(),
            description: wf.description.clone(),
        });
    }
    Ok(out)
}

const FILLER: [&str; 7] = ["for", "to", "into", "in", "on", "with", "please"];

/// Slack's own markup, undone: the bot mention, `&amp;` escapes, `<url|label>` links.
pub fn normalize(text: &str) -> String {
    let mut t = text.trim();
    // A leading mention of the bot: `<@U0123ABCD>` (possibly `<@U0123|landfall>`).
    if t.starts_with("<@") {
        if let Some(end) = t.find('>') {
            t = t[end + 1..].trim_start();
        }
    }
    for prefix in ["/landfall", "@landfall", "landfall"] {
        if let Some(rest) = t.strip_prefix(prefix) {
            if rest.is_empty() || rest.starts_with(char::is_whitespace) {
                t = rest.trim_start();
                break;
            }
        }
    }
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        match rest[start..].find('>') {
            Some(end) => {
                let inner = &rest[start + 1..start + end];
                let shown = inner.rsplit_once('|').map(|(_, l)| l).unwrap_or(inner);
                out.push_str(shown.trim_start_matches("mailto:"));
                rest = &rest[start + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace(['\u{201c}', '\u{201d}'], "\"")
        .replace(['\u{2018}', '\u{2019}'], "'")
}

fn usage_of(r: &Route) -> String {
    let mut u = format!("/landfall {}", r.trigger.command);
    for a in &r.trigger.args {
        u.push_str(&format!(" {}", a.to_uppercase()));
    }
    u.push_str(" [key=value …]");
    u
}

/// The help text: every command, built-in and from workflow files.
pub fn help(routes: &[Route]) -> String {
    let mut out = String::from("Commands:\n");
    for r in routes {
        out.push_str(&format!(
            "• `{}`: {}\n",
            usage_of(r),
            r.description.as_deref().unwrap_or(&r.workflow)
        ));
    }
    out.push_str(
        "• `/landfall status [RUN]` · `/landfall runs` · `/landfall cancel RUN` · `/landfall resume RUN` · `/landfall redrive RUN [from STEP]`\n\
         • `/landfall approve RUN NODE` · `/landfall reject RUN NODE` · `/landfall help`\n\
         • `/landfall plan COMMAND …`: what it would change, with an Apply button · `/landfall apply PLAN`",
    );
    out
}

/// Classifies one message.
pub fn classify(text: &str, routes: &[Route]) -> Intent {
    let text = normalize(text);
    let Some(words) = shlex::split(&text) else {
        return Intent::Usage {
            command: String::new(),
            usage: "/landfall help".into(),
            problem: "a quote is not closed".into(),
        };
    };
    let Some((first, rest)) = words.split_first() else {
        return Intent::Help;
    };
    let command = first.to_lowercase();
    let usage = |usage: &str, problem: &str| Intent::Usage {
        command: command.clone(),
        usage: usage.to_string(),
        problem: problem.to_string(),
    };
    let one = |usage_text: &str| -> Result<String, Intent> {
        match rest {
            [run] => Ok(run.clone()),
            [] => Err(usage(usage_text, "the run id is missing")),
            _ => Err(usage(usage_text, "too many words")),
        }
    };
    match command.as_str() {
        "help" | "?" => Intent::Help,
        "runs" if rest.is_empty() => Intent::Runs,
        "runs" => usage("/landfall runs", "it takes no arguments"),
        "status" => match rest {
            [] => Intent::Status { run: None },
            [run] => Intent::Status {
                run: Some(run.clone()),
            },
            _ => usage("/landfall status [RUN]", "too many words"),
        },
        "cancel" => one("/landfall cancel RUN").map_or_else(|e| e, |run| Intent::Cancel { run }),
        "resume" => one("/landfall resume RUN").map_or_else(|e| e, |run| Intent::Resume { run }),
        "redrive" => match rest {
            [run] => Intent::Redrive {
                run: run.clone(),
                from: None,
            },
            [run, from, step] if from == "from" || from == "--from" => Intent::Redrive {
                run: run.clone(),
                from: Some(step.clone()),
            },
            [] => usage("/landfall redrive RUN [from STEP]", "the run id is missing"),
            _ => usage(
                "/landfall redrive RUN [from STEP]",
                "give the run id, and `from STEP` to start elsewhere",
            ),
        },
        "approve" | "reject" => match rest {
            [run, node] => Intent::Decide {
                run: run.clone(),
                node: node.clone(),
                verdict: if command == "approve" {
                    Verdict::Approve
                } else {
                    Verdict::Reject
                },
            },
            _ => usage(
                &format!("/landfall {command} RUN NODE"),
                "give the run id and the waiting step",
            ),
        },
        "plan" => match rest.split_first() {
            None => usage(
                "/landfall plan COMMAND ARG…",
                "say which workflow to plan, as you would start it",
            ),
            Some((what, args)) => {
                match routes
                    .iter()
                    .find(|r| r.trigger.command == what.to_lowercase())
                {
                    None => usage(
                        "/landfall plan COMMAND ARG…",
                        &format!("no workflow answers to `{what}`"),
                    ),
                    Some(r) => match start(r, args) {
                        Intent::Start { workflow, inputs } => Intent::Plan { workflow, inputs },
                        Intent::Usage {
                            command,
                            usage,
                            problem,
                        } => Intent::Usage {
                            command,
                            usage: format!(
                                "/landfall plan {}",
                                usage.trim_start_matches("/landfall ")
                            ),
                            problem,
                        },
                        other => other,
                    },
                }
            }
        },
        "apply" => match rest {
            [plan] => Intent::Apply { plan: plan.clone() },
            [] => usage("/landfall apply PLAN", "the plan id is missing"),
            _ => usage("/landfall apply PLAN", "too many words"),
        },
        _ => match routes.iter().find(|r| r.trigger.command == command) {
            Some(r) => start(r, rest),
            None => Intent::Unknown { text },
        },
    }
}

fn start(r: &Route, words: &[String]) -> Intent {
    let mut inputs = BTreeMap::new();
    let mut positional = Vec::new();
    for w in words {
        match w.split_once('=') {
            Some((k, v)) if r.inputs.contains_key(k) => {
                if inputs.insert(k.to_string(), v.to_string()).is_some() {
                    return Intent::Usage {
                        command: r.trigger.command.clone(),
                        usage: usage_of(r),
                        problem: format!("`{k}` is given twice"),
                    };
                }
            }
            Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
                return Intent::Usage {
                    command: r.trigger.command.clone(),
                    usage: usage_of(r),
                    problem: format!(
                        "`{k}` is not an input of {} (inputs: {})",
                        r.workflow,
                        r.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                };
            }
            _ if FILLER.contains(&w.to_lowercase().as_str()) => {}
            _ => positional.push(w.clone()),
        }
    }
    // Positional words fill the args not already given as key=value, in order.
    let open: Vec<&String> = r
        .trigger
        .args
        .iter()
        .filter(|a| !inputs.contains_key(*a))
        .collect();
    if positional.len() > open.len() {
        return Intent::Usage {
            command: r.trigger.command.clone(),
            usage: usage_of(r),
            problem: format!("too many words: `{}`", positional[open.len()..].join(" ")),
        };
    }
    for (name, value) in open.into_iter().zip(positional) {
        inputs.insert(name.clone(), value);
    }
    if let Some(missing) = r.trigger.args.iter().find(|a| !inputs.contains_key(*a)) {
        return Intent::Usage {
            command: r.trigger.command.clone(),
            usage: usage_of(r),
            problem: format!("{} is missing", missing.to_uppercase()),
        };
    }
    Intent::Start {
        workflow: r.workflow.clone(),
        inputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(command: &str, args: &[&str], more: &[&str]) -> Route {
        let mut inputs = IndexMap::new();
        for a in args.iter().chain(more) {
            inputs.insert(
                a.to_string(),
                serde_json::from_value(serde_json::json!({ "type": "string" })).unwrap(),
            );
        }
        Route {
            workflow: format!("{command}-wf"),
            file: format!("{command}.yaml").into(),
            trigger: SlackTrigger {
                command: command.into(),
                args: args.iter().map(|s| s.to_string()).collect(),
                ..SlackTrigger::default()
            },
            inputs,
            description: None,
        }
    }

    fn routes() -> Vec<Route> {
        vec![
            route("onboard", &["customer"], &[]),
            route("provision", &["package", "customer"], &["regions"]),
        ]
    }

    fn start(workflow: &str, kv: &[(&str, &str)]) -> Intent {
        Intent::Start {
            workflow: workflow.into(),
            inputs: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// `plan` reads the rest as a workflow's command (so a plan has the inputs a start would
    /// have); `apply` takes one plan id.
    #[test]
    fn plans_read_as_the_start_they_plan() {
        let r = routes();
        assert_eq!(
            classify("/landfall plan provision acme-baseline@latest for acme", &r),
            Intent::Plan {
                workflow: "provision-wf".into(),
                inputs: [
                    ("package".to_string(), "acme-baseline@latest".to_string()),
                    ("customer".to_string(), "acme".to_string()),
                ]
                .into(),
            }
        );
        assert_eq!(
            classify("apply p-01k", &r),
            Intent::Apply {
                plan: "p-01k".into()
            }
        );
        let usage_of = |text: &str| match classify(text, &r) {
            Intent::Usage { usage, problem, .. } => (usage, problem),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            usage_of("plan onboard"),
            (
                "/landfall plan onboard CUSTOMER [key=value …]".into(),
                "CUSTOMER is missing".into()
            )
        );
        assert_eq!(
            usage_of("plan deploy everything").1,
            "no workflow answers to `deploy`"
        );
        assert_eq!(usage_of("plan").0, "/landfall plan COMMAND ARG…");
        assert_eq!(usage_of("apply").1, "the plan id is missing");
        assert_eq!(usage_of("apply p-1 p-2").1, "too many words");
    }

    #[test]
    fn redrive_takes_a_run_and_optionally_where_to_start() {
        let r = routes();
        assert_eq!(
            classify("/landfall redrive r-1", &r),
            Intent::Redrive {
                run: "r-1".into(),
                from: None
            }
        );
        assert_eq!(
            classify("redrive r-1 from deploy[2]", &r),
            Intent::Redrive {
                run: "r-1".into(),
                from: Some("deploy[2]".into())
            }
        );
        for bad in ["redrive", "redrive r-1 deploy", "redrive r-1 from"] {
            assert!(
                matches!(classify(bad, &r), Intent::Usage { .. }),
                "{bad}: {:?}",
                classify(bad, &r)
            );
        }
    }

    #[test]
    fn the_issues_examples() {
        let r = routes();
        assert_eq!(
            classify("onboard acme", &r),
            start("onboard-wf", &[("customer", "acme")])
        );
        assert_eq!(
            classify("<@U0BOT> provision acme-baseline@latest for acme", &r),
            start(
                "provision-wf",
                &[("package", "acme-baseline@latest"), ("customer", "acme")]
            )
        );
        assert_eq!(
            classify(
                "/landfall provision p@1 acme regions=\u{201c}us-east-1,eu-west-1\u{201d}",
                &r
            ),
            start(
                "provision-wf",
                &[
                    ("package", "p@1"),
                    ("customer", "acme"),
                    ("regions", "us-east-1,eu-west-1")
                ]
            )
        );
        assert_eq!(
            classify("STATUS r-1", &r),
            Intent::Status {
                run: Some("r-1".into())
            }
        );
        assert_eq!(classify("", &r), Intent::Help);
        assert_eq!(
            classify("approve r-1 approve", &r),
            Intent::Decide {
                run: "r-1".into(),
                node: "approve".into(),
                verdict: Verdict::Approve
            }
        );
        assert!(matches!(
            classify("deploy everything", &r),
            Intent::Unknown { .. }
        ));
        match classify("onboard", &r) {
            Intent::Usage { usage, problem, .. } => {
                assert_eq!(usage, "/landfall onboard CUSTOMER [key=value …]");
                assert_eq!(problem, "CUSTOMER is missing");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify("onboard acme colour=red", &r),
            Intent::Usage { .. }
        ));
        assert!(matches!(
            classify("onboard \"acme", &r),
            Intent::Usage { .. }
        ));
        assert!(help(&r).contains("/landfall provision PACKAGE CUSTOMER"));
    }

    #[test]
    fn the_repositorys_workflows_route_onboard_and_provision() {
        let registry = landfall_steps::registry(&landfall_steps::Settings::default());
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut wfs = Vec::new();
        for name in ["onboarding.yaml", "provisioning.yaml"] {
            let file = root.join("workflows").join(name);
            let text = std::fs::read_to_string(&file).unwrap();
            let c = landfall_engine::compile(&landfall_engine::Source::new(name, text), &registry);
            wfs.push((file, c.workflow.unwrap()));
        }
        let r = super::routes(&wfs).unwrap();
        assert_eq!(
            classify("onboard acme", &r),
            start("onboarding", &[("customer", "acme")])
        );
        assert_eq!(
            classify("@landfall provision acme-baseline@latest for acme", &r),
            start(
                "provisioning",
                &[("package", "acme-baseline@latest"), ("customer", "acme")]
            ),
            "as typed, before Slack turns it into <@U…>"
        );
        assert_eq!(
            classify("<@U0BOT> provision acme-baseline@latest for acme", &r),
            start(
                "provisioning",
                &[("package", "acme-baseline@latest"), ("customer", "acme")]
            )
        );
        let twice = vec![wfs[0].clone(), wfs[0].clone()];
        assert!(super::routes(&twice)
            .unwrap_err()
            .contains("claimed by both"));
    }

    #[test]
    fn slack_markup_is_undone() {
        assert_eq!(
            normalize("<@U1|landfall> onboard <mailto:a@b.c|a@b.c> &amp; &lt;x&gt;"),
            "onboard a@b.c & <x>"
        );
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9@._-]{0,12}".prop_filter("not a filler word", |w| {
            !FILLER.contains(&w.as_str()) && !w.contains('=')
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Feature: agent-onboarding-provisioning, Property 1: Message Routing Correctness.
        /// A message naming a workflow's command with its arguments (in any of the ways people
        /// write them) starts exactly that workflow with exactly those inputs; built-ins are
        /// recognised; and every message, whatever it is, gets exactly one outcome.
        #[test]
        fn routing_is_total_and_correct(
            which in 0usize..2,
            values in prop::collection::vec(word(), 2),
            prefix in prop::sample::select(vec!["", "/landfall ", "<@U0BOT> ", "  <@U0BOT|landfall>  "]),
            upper in any::<bool>(),
            filler in any::<bool>(),
            as_kv in any::<bool>(),
            noise in ".{0,40}",
        ) {
            let r = routes();
            let route = &r[which];
            let mut cmd = route.trigger.command.clone();
            if upper { cmd = cmd.to_uppercase(); }
            let mut text = format!("{prefix}{cmd}");
            let mut expected = BTreeMap::new();
            for (i, a) in route.trigger.args.iter().enumerate() {
                if as_kv && i == 0 {
                    text.push_str(&format!(" {a}={}", values[i]));
                } else {
                    if filler && i > 0 { text.push_str(" for"); }
                    text.push_str(&format!(" {}", values[i]));
                }
                expected.insert(a.clone(), values[i].clone());
            }
            prop_assert_eq!(classify(&text, &r), Intent::Start { workflow: route.workflow.clone(), inputs: expected });

            // Totality: anything at all gets one outcome, and a start only for a known command.
            if let Intent::Start { workflow, .. } = classify(&noise, &r) {
                prop_assert!(r.iter().any(|x| x.workflow == workflow));
            }
            let status = format!("{prefix}status {}", values[0]);
            prop_assert_eq!(classify(&status, &r), Intent::Status { run: Some(values[0].clone()) });
        }

        /// Totality over messages that come close to commands (command words anywhere, in any
        /// case, with and without their arguments, `key=value`, fillers, mentions): a workflow
        /// starts only when the message begins with its command, with every positional
        /// argument and only inputs it has, each value taken from the message.
        #[test]
        fn routing_never_starts_what_was_not_asked(
            prefix in prop::sample::select(vec!["", "/landfall ", "<@U0BOT> "]),
            words in prop::collection::vec(prop::sample::select(vec![
                "onboard", "provision", "Provision", "status", "help", "runs", "cancel",
                "resume", "approve", "reject", "for", "please", "acme", "globex",
                "acme-baseline@latest", "customer=acme", "regions=eu-west-1", "nope=1", "=",
                "r-1", "<@U0BOT>", "&lt;x&gt;",
            ]), 0..7),
        ) {
            let r = routes();
            let text = format!("{prefix}{}", words.join(" "));
            if let Intent::Start { workflow, inputs } = classify(&text, &r) {
                let route = r.iter().find(|x| x.workflow == workflow);
                prop_assert!(route.is_some(), "{} started unknown {}", text, workflow);
                let route = route.unwrap();
                let first = words.iter().find(|w| !w.starts_with("<@")).map(|w| w.to_lowercase());
                prop_assert_eq!(first.as_deref(), Some(route.trigger.command.as_str()), "{}", text);
                for a in &route.trigger.args {
                    prop_assert!(inputs.contains_key(a), "{}: {} missing", text, a);
                }
                for (k, v) in &inputs {
                    prop_assert!(route.inputs.contains_key(k), "{}: unknown input {}", text, k);
                    // Slack markup is undone first (a mention inside the message reads
                    // `@U0BOT`; a leading one is the address, not a word).
                    let said = normalize(&text);
                    prop_assert!(
                        said.split_whitespace().any(|w| w == v || w == format!("{k}={v}")),
                        "{}: {}={} is not in the message", text, k, v
                    );
                }
            }
        }
    }
}
