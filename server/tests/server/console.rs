//! The operator console over a real listener: sign-in and its cookie, pages behind the
//! session, CSRF refusals, and role refusals that are the API's own (403 and an
//! `access-denied` event). The browser tests (`tests/browser/`) drive the same pages in
//! Chromium against the demo lab.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::util::{OPERATOR_TOKEN, PgSchema, TOKEN, TestServer};

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; answers the `Cookie` header value of the session.
async fn sign_in(t: &TestServer, token: &str) -> String {
    let response = client()
        .post(t.url("/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/");
    let set = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    set.split(';').next().unwrap().to_owned()
}

async fn page(t: &TestServer, cookie: &str, path: &str) -> (StatusCode, String) {
    let response = client()
        .get(t.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Signs out with the overview's CSRF token; answers the (asserted 303) response.
async fn sign_out(t: &TestServer, cookie: &str) -> reqwest::Response {
    let (_, html) = page(t, cookie, "/").await;
    let out = client()
        .post(t.url("/logout"))
        .header(COOKIE, cookie)
        .form(&[("csrf", csrf_of(&html))])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    out
}

/// The CSRF token of a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn issue16_sign_in_opens_a_session_and_every_page_needs_it() {
    let t = TestServer::start().await;
    let anonymous = client().get(t.url("/devices")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()[LOCATION], "/login");
    let wrong = client()
        .post(t.url("/login"))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());

    let cookie = sign_in(&t, TOKEN).await;
    for (path, title) in [
        ("/", "Fleet overview"),
        ("/devices", "Devices"),
        ("/releases", "Releases"),
        ("/rollouts", "Rollouts"),
        ("/rollouts/new", "New rollout"),
        ("/flags", "Flags"),
        ("/audit", "Audit log"),
        ("/trust", "Trust set in force"),
    ] {
        let (status, html) = page(&t, &cookie, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            html.contains(&format!("<h1>{title}</h1>")),
            "{path}: {html}"
        );
        assert!(html.contains("alice (admin)"), "{path}");
    }
    // The API itself still wants a bearer token: the cookie opens nothing there.
    let api = client()
        .get(t.url("/api/v1/devices"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);

    // Signing out closes the session.
    let out = sign_out(&t, &cookie).await;
    assert!(
        out.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _) = page(&t, &cookie, "/").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn issue16_a_bad_filter_shows_its_error() {
    let t = TestServer::start().await;
    let cookie = sign_in(&t, TOKEN).await;
    let (status, html) = page(&t, &cookie, "/devices?filter=colour%3Dblue").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Filter error: unknown field"), "{html}");
    assert!(html.contains(r#"value="colour=blue""#));
}

#[tokio::test]
async fn issue16_forged_requests_are_refused() {
    let t = TestServer::start().await;
    let cookie = sign_in(&t, OPERATOR_TOKEN).await;
    // No or a wrong CSRF token: 403 and nothing reaches the API.
    for form in [vec![], vec![("csrf", "forged")]] {
        let response = client()
            .post(t.url("/flags/some-flag/kill"))
            .header(COOKIE, &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.text().await.unwrap().contains("CSRF"));
    }
    // Each refusal is audited (the flag was not touched: the API was never called).
    let csrf_refusals = t.events_of_kind("access-denied").await;
    assert_eq!(csrf_refusals.len(), 2);
    for e in &csrf_refusals {
        assert_eq!(e.actor, "otto");
        assert_eq!(e.details["cause"], "csrf");
        assert_eq!(e.details["path"], "/flags/some-flag/kill");
    }
    // The right token but a role the operator lacks: the API's 403 and its audit event.
    let (_, html) = page(&t, &cookie, "/rollouts").await;
    let csrf = csrf_of(&html);
    let response = client()
        .post(t.url("/rollouts/7/approve"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("needs the approver role")
    );
    let denied: Vec<_> = t
        .events_of_kind("access-denied")
        .await
        .into_iter()
        .filter(|e| e.details["cause"] != "csrf")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].actor, "otto");
    assert_eq!(denied[0].details["path"], "/api/v1/rollouts/7/approve");
    // No session at all: back to the sign-in page, nothing done.
    let anonymous = client()
        .post(t.url("/rollouts/7/abort"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
}

/// Devices of the benchmark.
const BENCH_DEVICES: usize = 100_000;

/// The devices page over a seeded fleet of 100,000 devices (SQLite): prints how long the
/// first page, a deep sorted page and a filtered page take, end to end over HTTP. A figure,
/// not an assertion (docs/console.md quotes it).
#[tokio::test]
#[ignore = "benchmark: seeds 100,000 devices and prints the devices page times"]
async fn issue16_devices_page_at_100k_devices() {
    devices_page_bench(TestServer::start().await, "SQLite").await;
}

/// The same on PostgreSQL (`OTA_TEST_DATABASE_URL`, a fresh schema).
#[tokio::test]
#[ignore = "benchmark, needs PostgreSQL: set OTA_TEST_DATABASE_URL"]
async fn issue16_devices_page_at_100k_devices_on_postgres() {
    let schema = PgSchema::create().await;
    let t = TestServer::start_with(1, Some(schema.url.clone())).await;
    devices_page_bench(t, "PostgreSQL").await;
    schema.drop().await;
}

/// Seeds [`BENCH_DEVICES`] devices into `t`'s database and prints the devices pages' times.
#[allow(clippy::disallowed_methods)] // A benchmark measures wall time.
async fn devices_page_bench(t: TestServer, database: &str) {
    let db = t.server.db();
    let seeding = std::time::Instant::now();
    let mut tx = db.begin().await.unwrap();
    for i in 0..BENCH_DEVICES {
        let mut report = ota_server::db::DeviceReport::default();
        report.hardware_class = Some(if i % 3 == 0 { "gw-a" } else { "gw-b" }.into());
        report.running_version = Some(format!("1.{}.0", i % 7));
        report.last_result = Some(
            if i % 50 == 0 {
                "rolled-back"
            } else {
                "succeeded"
            }
            .into(),
        );
        report.labels = [("site".to_string(), format!("site-{}", i % 100))].into();
        tx.upsert_device(
            &format!("dev-{i:06}"),
            &report,
            i % 4 != 0,
            false,
            0,
            i as i64,
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    println!(
        "seeded {BENCH_DEVICES} devices in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let cookie = sign_in(&t, TOKEN).await;
    for path in [
        "/devices",
        "/devices?sort=last-seen&dir=desc&page=1000",
        "/devices?filter=hw%3Dgw-a%20and%20label%3Asite%3Dsite-7&sort=version",
        // A label alone: narrowed by a LIKE over every row's labels (no index).
        "/devices?filter=label%3Asite%3Dsite-7",
        // A wildcard: nothing for SQL to narrow, every row's labels parsed.
        "/devices?filter=label%3Asite%3Dsite-7*",
        "/",
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let (status, html) = page(&t, &cookie, path).await;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(html.contains("</html>"));
        }
        times.sort_by(f64::total_cmp);
        println!(
            "GET {path}: median {:.0} ms, min {:.0} ms, max {:.0} ms over {} requests ({BENCH_DEVICES} devices, {database}, debug build unless --release)",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            times.len()
        );
    }
}

#[tokio::test]
async fn issue16_signing_out_ends_the_live_stream() {
    let t = TestServer::start().await;
    let cookie = sign_in(&t, TOKEN).await;
    let mut live = client()
        .get(t.url("/live/overview"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert!(
        live.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The first event is the overview as it is now.
    let mut seen = String::new();
    while !seen.contains("\n\n") {
        let chunk = live.chunk().await.unwrap().expect("the stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.starts_with("event: update\n"), "{seen}");

    sign_out(&t, &cookie).await;
    // The stream ends at its next period (2 s); the bound only keeps a broken build from
    // hanging the suite. Nothing but keep-alive comments may come before the end.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut rest = String::new();
        while let Some(chunk) = live.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        rest
    })
    .await
    .expect("the live stream outlived its session");
    assert!(!rest.contains("event:"), "{rest}");
    // A new stream on the closed session is refused (401: a stream is not redirected).
    let again = client()
        .get(t.url("/live/overview"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
}
