//! Integration tests of the website catalog through the real binary: website writes neither stall
//! nor disturb ingest, and concurrent website writes leave the file, the API's list and the
//! engine (realtime) agreeing, also after a restart. The catalog's own unit tests (in
//! `server/src/catalog.rs`) cover the parked-writer and rollback cases that need injection.

use std::collections::BTreeSet;

use pulse_testkit::fixtures::{counts_of, pageview};
use pulse_testkit::server::{Opts, Server};
use serde_json::{json, Value};

use crate::start;

/// How many PATCHes the burst sends, and how many events collect sends meanwhile.
const PATCHES: usize = 60;
const EVENTS: u64 = 60;

/// The ids in `<data-dir>/websites.json`.
fn file_ids(server: &Server) -> BTreeSet<String> {
    let bytes = std::fs::read(server.data_dir().join("websites.json")).unwrap();
    let file: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(file["version"], 1, "websites file version: {file}");
    file["websites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts that every listed website has a realtime answer (the engine holds it) and every id
/// in `gone` has none.
async fn assert_engine_matches(
    server: &Server,
    listed: &BTreeSet<String>,
    gone: &BTreeSet<String>,
) {
    for id in listed {
        let resp = server.get(&format!("/api/websites/{id}/realtime")).await;
        assert_eq!(
            resp.status, 200,
            "{id} is listed but realtime says {resp:?}"
        );
    }
    for id in gone.difference(listed) {
        let resp = server.get(&format!("/api/websites/{id}/realtime")).await;
        assert_eq!(
            resp.status, 404,
            "{id} is not listed but realtime says {resp:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_answers_202_and_realtime_stays_consistent_during_a_patch_burst() {
    let server = start(Opts::default());
    server.site("busy", "example.com").await;

    let patches = async {
        for i in 0..PATCHES {
            let body =
                json!({"name": format!("Busy {i}"), "domain": format!("d{}.example.com", i % 3)});
            let resp = server.patch_json("/api/websites/busy", &body).await;
            assert_eq!(resp.status, 200, "PATCH {i}: {resp:?}");
        }
    };
    let collects = async {
        let mut accepted = 0;
        for i in 0..EVENTS {
            let resp = server.collect(&pageview("busy", &format!("/p{i}"))).await;
            assert_eq!(
                resp.status, 202,
                "collect {i} during the PATCH burst: {resp:?}"
            );
            accepted += 1;
        }
        accepted
    };
    let reads = async {
        // Realtime during the burst: always answers, and the event count never goes back.
        let mut last_total = 0;
        for _ in 0..EVENTS {
            let (_, total) = counts_of(&server.realtime("busy").await);
            assert!(
                total >= last_total,
                "events in window fell from {last_total} to {total}"
            );
            last_total = total;
        }
    };
    let ((), accepted, ()) = tokio::join!(patches, collects, reads);

    let (active, total) = server.counts("busy").await;
    assert_eq!(total, accepted, "every 202 is counted once");
    assert_eq!(active, 1, "one browser from one address is one visitor");
    let site = server.get("/api/websites/busy").await.json();
    assert_eq!(site["data"]["name"], format!("Busy {}", PATCHES - 1));
    assert_eq!(file_ids(&server), BTreeSet::from(["busy".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_website_writes_leave_file_list_and_engine_equal_across_a_restart() {
    let mut server = start(Opts::default());
    let ids: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    tokio::join!(
        write_websites(&server, &ids, 0),
        write_websites(&server, &ids, 1),
        write_websites(&server, &ids, 2),
    );

    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let listed = server
        .website_ids()
        .await
        .into_iter()
        .collect::<BTreeSet<_>>();
    assert_eq!(file_ids(&server), listed);
    assert_engine_matches(&server, &listed, &all).await;

    server.restart();
    assert_eq!(
        server
            .website_ids()
            .await
            .into_iter()
            .collect::<BTreeSet<_>>(),
        listed,
        "the restart changed the websites"
    );
    assert_engine_matches(&server, &listed, &all).await;
}

/// Writer `t` of three: creates, patches and deletes websites among `ids` that the other
/// writers touch too.
async fn write_websites(server: &Server, ids: &[String], t: usize) {
    for i in 0..18 {
        let id = &ids[(i * 5 + t) % ids.len()];
        let resp = match (i + t) % 3 {
            0 => {
                let body = json!({"id": id, "name": "W", "domain": "example.com"});
                server.post_json("/api/websites", &body).await
            }
            1 => {
                let body = json!({"name": format!("W {t} {i}")});
                server
                    .patch_json(&format!("/api/websites/{id}"), &body)
                    .await
            }
            _ => server.delete(&format!("/api/websites/{id}")).await,
        };
        // Collisions between writers are expected; anything else is a failure.
        assert!(
            [200, 201, 204, 404, 409].contains(&resp.status),
            "website write {t}/{i} on {id}: {resp:?}"
        );
    }
}

#[tokio::test]
async fn a_deleted_website_stays_deleted_and_a_recreated_id_starts_empty_after_a_restart() {
    let mut server = start(Opts::default());
    server.site("ghost", "example.com").await;
    for i in 0..20 {
        let resp = server
            .collect(&pageview("ghost", &format!("/old/{i}")))
            .await;
        assert_eq!(resp.status, 202, "{resp:?}");
    }
    assert_eq!(server.delete("/api/websites/ghost").await.status, 204);
    server.site("ghost", "example.com").await;
    assert_eq!(
        server.counts("ghost").await,
        (0, 0),
        "a re-created id starts empty"
    );
    for i in 0..2 {
        let resp = server
            .collect(&pageview("ghost", &format!("/new/{i}")))
            .await;
        assert_eq!(resp.status, 202, "{resp:?}");
    }
    let status = server.restart();
    assert!(status.success(), "{status}");
    server.wait_ready(std::time::Duration::from_secs(30)).await;
    let data = server.realtime("ghost").await;
    assert_eq!(
        counts_of(&data),
        (1, 2),
        "the deleted website's 20 events came back after the restart: {data}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_and_recreating_during_ingest_gives_the_same_answer_after_a_restart() {
    let mut server = start(Opts::default());
    server.site("ghost", "example.com").await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ingest = async {
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // 202 while the website exists, 404 while it does not: both are fine here.
            let resp = server.collect(&pageview("ghost", &format!("/p/{i}"))).await;
            assert!(matches!(resp.status, 202 | 404), "{resp:?}");
            i += 1;
            tokio::task::yield_now().await;
        }
    };
    let churn = async {
        for _ in 0..5 {
            assert_eq!(server.delete("/api/websites/ghost").await.status, 204);
            server.site("ghost", "example.com").await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(ingest, churn);
    let before = server.realtime("ghost").await;
    let status = server.restart();
    assert!(status.success(), "{status}");
    server.wait_ready(std::time::Duration::from_secs(30)).await;
    let after = server.realtime("ghost").await;
    assert_eq!(
        counts_of(&after),
        counts_of(&before),
        "before the restart: {before}\nafter: {after}"
    );
}

/// Sends one pageview of `path` with `referrer`, with `DNT: 1` when `dnt`, asserting 202 (an
/// opted-out event is answered as accepted and not recorded).
async fn visit_from(server: &Server, path: &str, referrer: &str, dnt: bool) {
    let body = json!({"website_id": "live", "type": "pageview", "url": path, "referrer": referrer});
    let headers: &[(&str, &str)] = if dnt { &[("dnt", "1")] } else { &[] };
    let resp = server
        .collect_with(
            &body,
            Some(pulse_testkit::fixtures::CHROME_DESKTOP),
            headers,
        )
        .await;
    assert_eq!(resp.status, 202, "collect {path}: {resp:?}");
}

/// `url → referrer_domain` of every recent event of website `live`.
async fn recorded(server: &Server) -> std::collections::BTreeMap<String, Value> {
    pulse_testkit::fixtures::recent(&server.realtime("live").await)
        .into_iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap().to_owned(),
                e["referrer_domain"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patched_respect_dnt_and_domain_apply_to_the_next_event_and_survive_a_restart() {
    let mut server = start(Opts::default());
    server.site("live", "example.com").await;
    visit_from(&server, "/dnt-kept-out", "https://shop.example.org/", true).await;
    visit_from(&server, "/other-before", "https://shop.example.org/", false).await;

    // The PATCH lands while other traffic keeps arriving; the events after its 200 follow it.
    let background = async {
        for i in 0..EVENTS {
            visit_from(&server, &format!("/bg{i}"), "", false).await;
        }
    };
    let patch_then_visit = async {
        let patch = json!({"respect_dnt": false, "domain": "example.org"});
        let resp = server.patch_json("/api/websites/live", &patch).await;
        assert_eq!(resp.status, 200, "PATCH: {resp:?}");
        visit_from(&server, "/dnt-counted", "https://shop.example.org/", true).await;
        visit_from(&server, "/old-domain", "https://www.example.com/x", false).await;
    };
    tokio::join!(background, patch_then_visit);
    let seen = recorded(&server).await;
    assert!(
        !seen.contains_key("/dnt-kept-out"),
        "an opted-out visit before the PATCH was recorded: {seen:?}"
    );
    assert_eq!(
        seen.get("/other-before"),
        Some(&json!("shop.example.org")),
        "before the PATCH example.org is another site: {seen:?}"
    );
    assert_eq!(
        seen.get("/dnt-counted"),
        Some(&Value::Null),
        "after PATCH respect_dnt=false a DNT visit is recorded, and after PATCH \
         domain=example.org its subdomain is a self-referral: {seen:?}"
    );
    assert_eq!(
        seen.get("/old-domain"),
        Some(&json!("example.com")),
        "after the PATCH the old domain is another site: {seen:?}"
    );
    let (_, total) = server.counts("live").await;
    assert_eq!(total, EVENTS + 3, "every recorded event is counted once");

    // After a restart the file alone rebuilds the patched website.
    assert!(server.restart().success(), "SIGTERM before the restart");
    let site = server.get("/api/websites/live").await.json();
    assert_eq!(
        (&site["data"]["respect_dnt"], &site["data"]["domain"]),
        (&json!(false), &json!("example.org")),
        "{site}"
    );
    visit_from(
        &server,
        "/dnt-after-restart",
        "https://www.example.org/",
        true,
    )
    .await;
    let seen = recorded(&server).await;
    assert_eq!(
        seen.get("/dnt-after-restart"),
        Some(&Value::Null),
        "after the restart DNT is still ignored and example.org is still the site: {seen:?}"
    );
    let resp = server
        .patch_json("/api/websites/live", &json!({"respect_dnt": true}))
        .await;
    assert_eq!(resp.status, 200, "PATCH back: {resp:?}");
    visit_from(&server, "/dnt-kept-out-again", "", true).await;
    assert!(
        !recorded(&server).await.contains_key("/dnt-kept-out-again"),
        "PATCH respect_dnt=true after a restart applies to the next event"
    );
}
