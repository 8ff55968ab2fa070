//! Property tests of the Slack threads (seed properties 2 and 4): the real thread code and
//! the real slack-morphism client, over HTTP to the recording Slack server.

use landfall_steps::milestone::Milestone;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use landfall::slack::thread;
use landfall::slack::web;
use landfall_engine::state::RunStatus;
use landfall_engine::store::{MemStore, Store};
use landfall_engine::{Engine, Registry};
use landfall_engine::{Observer, RunEvent};
use proptest::prelude::*;
use serde_json::json;

use crate::slack_api::SlackApi;

/// A `notify` step's milestone, as the plugin emits it.
fn notification(run: &str, n: usize, to: &[String]) -> RunEvent {
    let (kind, data) = Milestone::Notification {
        template: "note".into(),
        to: to.to_vec(),
        text: format!("note {n} of {run}"),
        blocks: None,
    }
    .into_parts();
    RunEvent::Milestone {
        run_id: run.into(),
        node: format!("notify{n}"),
        kind,
        data,
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
            let chat: Arc<dyn web::Chat> = Arc::from(web::client(&api.url, web::Auth::Static("xoxb-t".into())).unwrap());
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

fn tokens(
    api: &SlackApi,
    store: Arc<dyn Store>,
) -> landfall::slack::tokens::Tokens<
    impl slack_morphism::prelude::SlackClientHttpConnector + Send + Sync,
> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let connector = slack_morphism::prelude::SlackClientHyperConnector::with_connector(
        hyper_util::client::legacy::connect::HttpConnector::new(),
    )
    .with_slack_api_url(&api.url);
    landfall::slack::tokens::Tokens {
        client: slack_morphism::prelude::SlackClient::new(connector),
        store,
        key: landfall_engine::DataKey::from_bytes(&[7; 32]).unwrap(),
        client_id: "cid".into(),
        client_secret: "csecret".into(),
    }
}

/// A token and whether it is well formed, said by how it was made (not by `well_formed`, the
/// code under test).
fn token() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        "xoxb-[0-9]{6}-[A-Za-z0-9]{20}".prop_map(|t| (t, true)),
        "xoxe\\.xoxb-1-[A-Za-z0-9]{24}".prop_map(|t| (t, true)),
        // Malformed: a prefix Slack does not use, a good prefix with a space or a quote inside,
        // too short, too long, empty.
        "(xoxz|xob|abcd)-[A-Za-z0-9]{20,30}".prop_map(|t| (t, false)),
        "xoxb-[A-Za-z0-9]{8}[ \"<][A-Za-z0-9]{12}".prop_map(|t| (t, false)),
        "xoxb-[A-Za-z0-9]{1,10}".prop_map(|t| (t, false)),
        "xoxb-[A-Za-z0-9]{600}".prop_map(|t| (t, false)),
        Just((String::new(), false)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Feature: agent-onboarding-provisioning, Property 3: Authentication Token Validation.
    /// A malformed, revoked or expired token is never handed out; a token within five
    /// minutes of expiry is refreshed (once, through `oauth.v2.access`) before it is used.
    #[test]
    fn bad_tokens_are_never_used_and_refresh_comes_before_expiry(
        (access, access_ok) in token(),
        refresh in prop::option::of(prop_oneof![
            Just(("xoxe-1-refresh-token-0000".to_string(), true)),
            Just(("xoxe-1-revoked-refresh-token".to_string(), true)),
            Just(("not a token".to_string(), false)),
        ]),
        expires_in in prop::option::of(-3600i64..7200),
        revoked in prop::bool::weighted(0.2),
    ) {
        use landfall::slack::tokens::{Grant, TokenError, REFRESH_BEFORE};
        let can_refresh = refresh.as_ref().is_some_and(|(_, ok)| *ok);
        let refresh = refresh.map(|(t, _)| t);
        let api = SlackApi::start(0);
        let store = Arc::new(MemStore::default());
        let t = tokens(&api, store.clone());
        let now = 1_800_000_000i64;
        let g = Grant { access_token: access.clone(), refresh_token: refresh.clone(), expires_at: expires_in.map(|s| now + s), team_id: None, enterprise_id: None, revoked };
        t.save(&g).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(t.current(now));
        let refreshes = api.calls().iter().filter(|c| c.method == "oauth.v2.access").count();
        let due = expires_in.is_some_and(|s| s <= REFRESH_BEFORE);
        match &got {
            Ok(tok) => {
                prop_assert!(tok == &access && access_ok || tok.starts_with("xoxe.xoxb-1-fresh-token-"), "handed out a malformed token: {:?}", tok);
                prop_assert!(!revoked);
                if due && can_refresh {
                    prop_assert_eq!(refreshes, 1);
                    prop_assert!(tok.starts_with("xoxe.xoxb-1-fresh-token-"));
                    let saved = t.load().unwrap().unwrap();
                    prop_assert_eq!(&saved.access_token, tok);
                    prop_assert!(saved.expires_at.unwrap() > now + REFRESH_BEFORE);
                } else {
                    prop_assert_eq!(tok, &access);
                    prop_assert_eq!(refreshes, 0);
                    prop_assert!(expires_in.is_none_or(|s| s > 0), "an expired token was used");
                }
            }
            Err(TokenError::Revoked) => prop_assert!(revoked || refresh.as_deref() == Some("xoxe-1-revoked-refresh-token")),
            Err(TokenError::Expired) => prop_assert!(expires_in.is_some_and(|s| s <= 0) && !can_refresh),
            Err(TokenError::Malformed) => prop_assert!(!access_ok || due),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
        if revoked {
            prop_assert_eq!(refreshes, 0, "a revoked grant is not even refreshed");
        }
        // A grant whose sealed bytes were changed is refused, not used.
        let mut sealed = store.secret("slack.bot-grant").unwrap().unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        store.commit(landfall_engine::store::Batch { secrets: vec![("slack.bot-grant".into(), sealed)], ..Default::default() }).unwrap();
        prop_assert!(matches!(rt.block_on(t.current(now)), Err(TokenError::Sealed(_))));
    }
}

fn due_grant(access: &str, refresh: &str, expires_at: i64) -> landfall::slack::tokens::Grant {
    landfall::slack::tokens::Grant {
        access_token: access.into(),
        refresh_token: Some(refresh.into()),
        expires_at: Some(expires_at),
        team_id: None,
        enterprise_id: None,
        revoked: false,
    }
}

fn refreshes(api: &SlackApi) -> usize {
    api.calls()
        .iter()
        .filter(|c| c.method == "oauth.v2.access")
        .count()
}

/// Slack revokes a refresh token once it is used (the recording server does too). Eight
/// messages sent at once near expiry: one refresh, every sender gets the new token, and the
/// stored grant holds the new refresh token. Without turns, seven refreshes reuse a revoked
/// token and fail as `Revoked`.
#[test]
fn a_token_asked_for_at_once_near_expiry_is_refreshed_once() {
    let api = SlackApi::start(0);
    let t = Arc::new(tokens(&api, Arc::new(MemStore::default())));
    let now = 1_800_000_000i64;
    t.save(&due_grant(
        "xoxe.xoxb-1-old-token-000000",
        "xoxe-1-refresh-token-old",
        now + 60,
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let got: Vec<_> = rt.block_on(async {
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let t = Arc::clone(&t);
                tokio::spawn(async move { t.current(now).await })
            })
            .collect();
        let mut out = Vec::new();
        for a in asks {
            out.push(a.await.unwrap());
        }
        out
    });
    assert_eq!(refreshes(&api), 1, "{got:?}");
    let saved = t.load().unwrap().unwrap();
    assert!(saved.access_token.starts_with("xoxe.xoxb-1-fresh-token-"));
    assert_ne!(
        saved.refresh_token.as_deref(),
        Some("xoxe-1-refresh-token-old")
    );
    for g in got {
        assert_eq!(g.as_deref(), Ok(saved.access_token.as_str()));
    }
}

/// Another process holding the refresh lease (a file lock on the redb store, as a second
/// `landfall` process would): this one does not refresh. A token not yet expired is used as
/// it is; an expired one is waited on until the other process saves the fresh grant; once the
/// lease is free, this process refreshes.
#[test]
fn while_another_process_refreshes_the_token_is_not_refreshed_twice() {
    use landfall::slack::tokens::REFRESH_LEASE;
    let api = SlackApi::start(0);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(landfall_engine::store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let t = Arc::new(tokens(&api, Arc::clone(&store)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let now = 1_800_000_000i64;
    let other = store.lease(REFRESH_LEASE).unwrap();
    assert!(other.is_some(), "the other process's lease");

    // Due, not expired: used as it is.
    t.save(&due_grant(
        "xoxe.xoxb-1-old-token-000000",
        "xoxe-1-refresh-token-aaaa",
        now + 60,
    ))
    .unwrap();
    assert_eq!(
        rt.block_on(t.current(now)).as_deref(),
        Ok("xoxe.xoxb-1-old-token-000000")
    );

    // Expired: waits for the other process's grant.
    t.save(&due_grant(
        "xoxe.xoxb-1-old-token-000000",
        "xoxe-1-refresh-token-aaaa",
        now - 1,
    ))
    .unwrap();
    let waiting = {
        let t = Arc::clone(&t);
        rt.spawn(async move { t.current(now).await })
    };
    std::thread::sleep(Duration::from_millis(400));
    assert!(!waiting.is_finished(), "an expired token is not handed out");
    t.save(&due_grant(
        "xoxe.xoxb-1-their-token-0000",
        "xoxe-1-refresh-token-bbbb",
        now + 43_200,
    ))
    .unwrap();
    assert_eq!(
        rt.block_on(waiting).unwrap().as_deref(),
        Ok("xoxe.xoxb-1-their-token-0000")
    );
    assert_eq!(refreshes(&api), 0);

    // Expired, and the other process never saves: after a while, an error that says so.
    t.save(&due_grant(
        "xoxe.xoxb-1-their-token-0000",
        "xoxe-1-refresh-token-bbbb",
        now - 1,
    ))
    .unwrap();
    match rt.block_on(t.current(now)) {
        Err(landfall::slack::tokens::TokenError::Refresh(why)) => {
            assert!(why.contains("another Landfall process"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(refreshes(&api), 0);

    // The lease given back: this process refreshes.
    drop(other);
    t.save(&due_grant(
        "xoxe.xoxb-1-their-token-0000",
        "xoxe-1-refresh-token-bbbb",
        now + 60,
    ))
    .unwrap();
    let fresh = rt.block_on(t.current(now)).unwrap();
    assert!(fresh.starts_with("xoxe.xoxb-1-fresh-token-"), "{fresh}");
    assert_eq!(refreshes(&api), 1);
}

/// A burst of progress events edits the header at most once per `EDIT_EVERY` (plus the final
/// edit): well inside Slack's tier for `chat.update`, whatever a deployment reports.
#[test]
fn progress_edits_are_coalesced() {
    let api = SlackApi::start(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let chat: Arc<dyn web::Chat> =
            Arc::from(web::client(&api.url, web::Auth::Static("xoxb-t".into())).unwrap());
        let engine = Engine::new(Arc::new(Registry::new()), Arc::new(MemStore::default()));
        let obs = thread::start(
            chat,
            engine,
            "r".into(),
            "wf".into(),
            "C1".into(),
            "U1".into(),
        );
        obs.on_event(&RunEvent::RunStarted {
            run_id: "r".into(),
            workflow: "wf".into(),
            resumed: false,
            nodes_total: 1,
        });
        // 300 progress reports over ~3 s.
        for i in 0..300 {
            obs.on_event(&RunEvent::Progress {
                run_id: "r".into(),
                node: "deploy[0]".into(),
                percent: i as f64 / 3.0,
                message: None,
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        obs.on_event(&RunEvent::RunFinished {
            run_id: "r".into(),
            status: RunStatus::Succeeded,
        });
        obs.flush(Duration::from_secs(10)).await;
    });
    let elapsed = started.elapsed().as_secs_f64();
    let edits = api
        .calls()
        .iter()
        .filter(|c| c.method == "chat.update")
        .count();
    let allowed = (elapsed / thread::EDIT_EVERY.as_secs_f64()).ceil() as usize + 2;
    assert!(edits >= 2, "progress was shown at all: {edits}");
    assert!(
        edits <= allowed,
        "{edits} edits in {elapsed:.1} s (at most {allowed})"
    );
}
