//! Property tests of the Slack threads (seed properties 2 and 4): the real thread code and
//! the real slack-morphism client, over HTTP to the recording Slack server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use landfall::slack::thread;
use landfall::slack::web;
use landfall_engine::events::{Observer, RunEvent};
use landfall_engine::state::RunStatus;
use landfall_engine::store::MemStore;
use landfall_engine::{Engine, Registry};
use proptest::prelude::*;
use serde_json::json;

use crate::slack_api::SlackApi;

fn notification(run: &str, n: usize, to: &[String]) -> RunEvent {
    RunEvent::Milestone {
        run_id: run.into(),
        node: format!("notify{n}"),
        kind: "notification".into(),
        data: json!({ "text": format!("note {n} of {run}"), "to": to }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Feature: agent-onboarding-provisioning, Property 2: Thread Isolation.
    /// Feature: agent-onboarding-provisioning, Property 4: Notification Delivery Completeness.
    /// Concurrent runs each get one thread; every message of a run lands in its own thread
    /// and no other; every notification is delivered exactly once, mentioning every
    /// stakeholder, even when Slack first answers 429 or 500.
    #[test]
    fn threads_never_mix_and_every_notification_arrives_once(
        runs in 2usize..5,
        notes in prop::collection::vec(0usize..4, 5),
        stakeholders in prop::collection::btree_set("U[A-Z0-9]{6}", 0..3),
        // Slack's waits are real (Retry-After is in whole seconds): mostly no failure.
        failures in prop_oneof![4 => Just(0usize), 1 => Just(1), 1 => Just(2)],
    ) {
        let api = SlackApi::start(failures);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let to: Vec<String> = stakeholders.iter().cloned().collect();
        rt.block_on(async {
            let chat: Arc<dyn web::Chat> = Arc::from(web::client(&api.url, "xoxb-t").unwrap());
            let engine = Engine::new(Arc::new(Registry::new()), Arc::new(MemStore::default()));
            let mut tasks = Vec::new();
            for r in 0..runs {
                let run = format!("run-{r}");
                let obs = thread::start(Arc::clone(&chat), engine.clone(), run.clone(), "wf".into(), "C1".into(), "U1".into());
                let count = notes[r % notes.len()];
                let to = to.clone();
                tasks.push(tokio::spawn(async move {
                    obs.on_event(&RunEvent::RunStarted { run_id: run.clone(), workflow: "wf".into(), resumed: false, nodes_total: count });
                    for n in 0..count {
                        obs.on_event(&notification(&run, n, &to));
                        tokio::task::yield_now().await;
                    }
                    obs.on_event(&RunEvent::RunFinished { run_id: run.clone(), status: RunStatus::Succeeded });
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let start = Instant::now();
        let done = |c: &crate::slack_api::Call| c.body["text"].as_str().is_some_and(|t| t.starts_with("Run `run-"));
        while api.calls().iter().filter(|c| done(c)).count() < runs {
            prop_assert!(start.elapsed() < Duration::from_secs(30), "threads did not finish: {:#?}", api.calls());
            std::thread::sleep(Duration::from_millis(20));
        }
        let calls = api.calls();
        prop_assert_eq!(api.refused(), failures);
        let mut headers = BTreeSet::new();
        for r in 0..runs {
            let run = format!("run-{r}");
            let header: Vec<_> = calls.iter().filter(|c| c.method == "chat.postMessage" && c.body["thread_ts"].is_null() && c.body["text"].as_str().unwrap_or_default().contains(&run)).collect();
            prop_assert_eq!(header.len(), 1, "one header per run");
            let ts = header[0].ts.clone();
            prop_assert!(headers.insert(ts.clone()));
            let mine: Vec<_> = calls.iter().filter(|c| c.body["thread_ts"] == ts.as_str()).collect();
            for c in &mine {
                let t = c.body["text"].as_str().unwrap_or_default();
                prop_assert!(t.contains(&format!("of {run}")) || t.contains(&format!("`{run}`")), "{} landed in {}'s thread", t, run);
            }
            for n in 0..notes[r % notes.len()] {
                let marker = format!("note {n} of {run}");
                let got: Vec<_> = calls.iter().filter(|c| c.body["text"].as_str().unwrap_or_default().ends_with(&marker)).collect();
                prop_assert_eq!(got.len(), 1, "{} delivered once", marker);
                prop_assert_eq!(&got[0].body["thread_ts"], &json!(ts));
                for s in &to {
                    let mention = format!("<@{s}>");
                    prop_assert!(got[0].body["text"].as_str().unwrap_or_default().contains(&mention));
                }
            }
        }
    }
}
