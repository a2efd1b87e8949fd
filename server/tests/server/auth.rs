//! Operator tokens and roles: 401 without a token, 403 `forbidden-role` for a role that does
//! not grant the request, the operator's name becomes the audit actor.

use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;
use serde_json::{Value, json};

use ota_server::config::Role;
use ota_server::http::ROLE_TABLE;

use crate::fleet::{Backend, World};
use crate::util::{
    APPROVER_TOKEN, BOB_TOKEN, OPERATOR_TOKEN, Options, PUBLISHER_TOKEN, TOKEN, TestServer,
    artifact, error_of, release,
};

#[tokio::test]
async fn api_requires_a_valid_token() {
    let t = TestServer::start().await;
    for path in [
        "/api/v1/releases",
        "/api/v1/devices",
        "/api/v1/events",
        "/api/v1/no-such-endpoint",
    ] {
        let r = t.client.get(t.url(path)).send().await.unwrap();
        assert!(r.headers().get(WWW_AUTHENTICATE).is_some());
        assert_eq!(
            error_of(r).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            "{path}"
        );

        let r = t
            .client
            .get(t.url(path))
            .bearer_auth("alice-token-0123456788")
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(r).await.0, StatusCode::UNAUTHORIZED, "{path}");

        let r = t
            .client
            .get(t.url(path))
            .header("authorization", "Basic YWxpY2U6eA==")
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(r).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    // A publish without a token is refused before anything is read.
    let art = artifact(10, 1);
    let form = reqwest::multipart::Form::new()
        .part(
            "release",
            reqwest::multipart::Part::bytes(release("1", &art, &[1])),
        )
        .part("artifact", reqwest::multipart::Part::bytes(art));
    let r = t
        .client
        .post(t.url("/api/v1/releases"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(t.server.db().count_releases().await.unwrap(), 0);

    // With a token: unknown endpoints are a JSON 404, wrong methods a JSON 405.
    let r = t.get("/api/v1/no-such-endpoint").send().await.unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "not-found".into())
    );
    let r = t
        .client
        .delete(t.url("/api/v1/releases"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn public_endpoints_need_no_token() {
    let t = TestServer::start().await;
    let r = t.client.get(t.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = t.client.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_operator_is_the_audit_actor() {
    let t = TestServer::start().await;
    let art = artifact(64, 9);
    let form = reqwest::multipart::Form::new()
        .part(
            "release",
            reqwest::multipart::Part::bytes(release("1", &art, &[1])),
        )
        .part("artifact", reqwest::multipart::Part::bytes(art));
    let r = t
        .client
        .post(t.url("/api/v1/releases"))
        .bearer_auth(BOB_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let events = t.events_of_kind("release-published").await;
    assert_eq!(events[0].actor, "bob");
    let listed: serde_json::Value = t.get_json("/api/v1/releases").await;
    assert_eq!(listed["releases"][0]["published_by"], "bob");
}

/// Every token of the test server, with its operator and role.
const EVERY_ROLE: [(&str, &str); 5] = [
    (TOKEN, "admin"),
    (BOB_TOKEN, "admin"),
    (PUBLISHER_TOKEN, "publisher"),
    (OPERATOR_TOKEN, "operator"),
    (APPROVER_TOKEN, "approver"),
];

/// Publishes a small release as `token`.
async fn publish_as(t: &TestServer, token: &str, seed: u8) -> reqwest::Response {
    let art = artifact(64, seed);
    let form = reqwest::multipart::Form::new()
        .part(
            "release",
            reqwest::multipart::Part::bytes(release(&format!("1.{seed}"), &art, &[1])),
        )
        .part("artifact", reqwest::multipart::Part::bytes(art));
    t.client
        .post(t.url("/api/v1/releases"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Asserts a 403 `forbidden-role` whose message names `needed`.
async fn assert_forbidden(response: reqwest::Response, needed: &str) {
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["cause"], "forbidden-role", "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(&format!("the {needed} role")), "{message}");
}

#[tokio::test]
async fn issue7_publishing_needs_the_publisher_role() {
    let t = TestServer::start().await;
    assert_forbidden(publish_as(&t, OPERATOR_TOKEN, 1).await, "publisher").await;
    assert_forbidden(publish_as(&t, APPROVER_TOKEN, 2).await, "publisher").await;
    assert_eq!(t.server.db().count_releases().await.unwrap(), 0);

    // The refusals are audited, with the operator and roles and never the token.
    let denied = t.events_of_kind("access-denied").await;
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0].actor, "otto");
    assert_eq!(
        denied[0].details,
        json!({ "method": "POST", "path": "/api/v1/releases", "role": "operator", "needed": "publisher" })
    );
    assert_eq!(denied[1].actor, "ada");
    assert!(!format!("{denied:?}").contains(OPERATOR_TOKEN));

    assert_eq!(
        publish_as(&t, PUBLISHER_TOKEN, 3).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        publish_as(&t, TOKEN, 4).await.status(),
        StatusCode::CREATED,
        "admin"
    );
    let published = t.events_of_kind("release-published").await;
    assert_eq!(published[0].actor, "pat");
}

#[tokio::test]
async fn issue7_flag_edits_need_the_operator_role() {
    let t = TestServer::start().await;
    let post = |token: &str, op: &str| {
        let body = if op == "set" {
            json!({ "on": true })
        } else {
            json!({})
        };
        t.post_as(token, &format!("/api/v1/flags/f1/{op}"), &body)
    };
    let delete = |token: &str| {
        t.client
            .delete(t.url("/api/v1/flags/f1"))
            .bearer_auth(token)
    };

    assert_forbidden(
        post(PUBLISHER_TOKEN, "set").send().await.unwrap(),
        "operator",
    )
    .await;
    assert_forbidden(
        post(APPROVER_TOKEN, "set").send().await.unwrap(),
        "operator",
    )
    .await;
    let r = post(OPERATOR_TOKEN, "set").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    assert_forbidden(
        post(PUBLISHER_TOKEN, "kill").send().await.unwrap(),
        "operator",
    )
    .await;
    assert_forbidden(
        post(APPROVER_TOKEN, "revive").send().await.unwrap(),
        "operator",
    )
    .await;
    assert_forbidden(delete(PUBLISHER_TOKEN).send().await.unwrap(), "operator").await;
    // Refused edits changed nothing.
    let flag: Value = t.get_json("/api/v1/flags/f1").await;
    assert_eq!(flag["flag"]["killed"], false, "{flag}");

    for op in ["kill", "revive"] {
        let r = post(OPERATOR_TOKEN, op).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{op}");
    }
    let r = delete(OPERATOR_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = t.get("/api/v1/flags/f1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn issue7_every_role_reads_everything() {
    let t = TestServer::start().await;
    let digest = publish_as(&t, TOKEN, 1)
        .await
        .json::<Value>()
        .await
        .unwrap()["release"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let r = t
        .post_as(TOKEN, "/api/v1/flags/f1/set", &json!({ "on": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for (token, role) in EVERY_ROLE {
        for path in [
            "/api/v1/releases".to_string(),
            format!("/api/v1/releases/{digest}"),
            "/api/v1/devices".into(),
            "/api/v1/devices?filter=online".into(),
            "/api/v1/events".into(),
            "/api/v1/rollouts".into(),
            "/api/v1/flags".into(),
            "/api/v1/flags/f1".into(),
        ] {
            let r = t
                .client
                .get(t.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{role} GET {path}");
        }
    }
    assert!(t.events_of_kind("access-denied").await.is_empty());
}

#[tokio::test]
async fn issue7_unknown_paths_and_wrong_methods_answer_as_before_for_every_role() {
    let t = TestServer::start().await;
    for (token, role) in EVERY_ROLE {
        let r = t
            .post_as(token, "/api/v1/no-such-endpoint", &json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND, "{role}");
        let r = t
            .client
            .delete(t.url("/api/v1/releases"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(r).await.0,
            StatusCode::METHOD_NOT_ALLOWED,
            "{role}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_rollouts_need_the_operator_role_and_approval_the_approver_role() {
    let w = World::start(Backend::Embedded, Options::default()).await;
    // Neither a publisher nor an approver creates rollouts; nothing is created.
    let (status, body) = w.create(PUBLISHER_TOKEN, json!({ "dry_run": true })).await;
    assert_eq!(
        (status, &body["cause"]),
        (StatusCode::FORBIDDEN, &json!("forbidden-role"))
    );
    let (status, body) = w.create(APPROVER_TOKEN, json!({ "dry_run": true })).await;
    assert_eq!(
        (status, &body["cause"]),
        (StatusCode::FORBIDDEN, &json!("forbidden-role"))
    );

    let (status, body) = w.forced_reinstall(OPERATOR_TOKEN, 2).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["rollout"]["status"], "awaiting-approval");
    assert_eq!(body["rollout"]["created_by"], "otto");
    let id = body["rollout"]["id"].as_i64().unwrap();

    // Four eyes: operators and publishers do not approve; the approver does.
    for token in [OPERATOR_TOKEN, PUBLISHER_TOKEN] {
        let (status, body) = w.op(token, id, "approve").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["cause"], "forbidden-role");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("the approver role")
        );
    }
    // An approver steers nothing else.
    for op in ["pause", "abort"] {
        let (status, body) = w.op(APPROVER_TOKEN, id, op).await;
        assert_eq!(
            (status, &body["cause"]),
            (StatusCode::FORBIDDEN, &json!("forbidden-role")),
            "{op}"
        );
    }
    assert_eq!(w.rollout(id).await["status"], "awaiting-approval");

    let (status, body) = w.op(APPROVER_TOKEN, id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rollout"]["approved_by"], "ada");

    // Server labels are the operator's too.
    let labels = json!({ "labels": { "ring": "canary" } });
    let path = format!("/api/v1/devices/{}/labels", w.id(0));
    let put = |token: &str| {
        w.t.client
            .put(w.t.url(&path))
            .bearer_auth(token)
            .json(&labels)
    };
    assert_forbidden(put(PUBLISHER_TOKEN).send().await.unwrap(), "operator").await;
    assert_eq!(
        put(OPERATOR_TOKEN).send().await.unwrap().status(),
        StatusCode::OK
    );
    let denied = w.events("kind=access-denied").await;
    assert_eq!(denied.len(), 7);
    w.finish().await;
}

/// Everything the server logs, captured in memory.
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// Current-thread runtime: the server's tasks run on this thread, under the capturing subscriber.
#[tokio::test]
async fn issue7_tokens_never_reach_the_log() {
    let capture = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    // tracing-core takes a fast path while at most one dispatcher is registered: a callsite
    // first reached on another test's thread would then be cached as disabled for all. A
    // second (silent) dispatcher keeps every callsite evaluated per thread.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    let wrong = "wrong-token-0123456789-guess";

    let t = TestServer::start().await;
    let r = t
        .client
        .get(t.url("/api/v1/releases"))
        .bearer_auth(wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for token in [TOKEN, PUBLISHER_TOKEN] {
        let r = t
            .client
            .get(t.url("/api/v1/releases"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // A refusal for the role and a refused publish are both logged.
    assert_eq!(
        publish_as(&t, APPROVER_TOKEN, 1).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = t
        .client
        .post(t.url("/api/v1/releases"))
        .bearer_auth(PUBLISHER_TOKEN)
        .body("not multipart")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        publish_as(&t, PUBLISHER_TOKEN, 2).await.status(),
        StatusCode::CREATED
    );
    t.server.shutdown().await.unwrap();

    let log = capture.text();
    for expected in [
        "ota server started",
        "request refused: wrong role",
        "release refused",
        "release published",
    ] {
        assert!(log.contains(expected), "{expected:?} not logged:\n{log}");
    }
    for token in [
        wrong,
        TOKEN,
        BOB_TOKEN,
        PUBLISHER_TOKEN,
        OPERATOR_TOKEN,
        APPROVER_TOKEN,
    ] {
        assert!(!log.contains(token), "token {token:?} in the log:\n{log}");
    }
}

/// A token of `role`.
fn token_of(role: Role) -> &'static str {
    match role {
        Role::Publisher => PUBLISHER_TOKEN,
        Role::Operator => OPERATOR_TOKEN,
        Role::Approver => APPROVER_TOKEN,
        _ => TOKEN,
    }
}

/// Every row of the role table, whatever it holds: the roles it does not grant get 403
/// `forbidden-role` (and nothing changes), the role it names and `admin` get past the check
/// (the empty body or unknown ids then answer 400 or 404, never 403).
#[tokio::test]
async fn issue7_every_row_of_the_role_table_is_enforced() {
    let t = TestServer::start().await;
    for (method, route, needed) in ROLE_TABLE {
        let path = route
            .replace("{id}", "999")
            .replace("{name}", "no-such-flag");
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
        let send = |token: &'static str| {
            t.client
                .request(method.clone(), t.url(&path))
                .bearer_auth(token)
                .json(&json!({}))
                .send()
        };
        for role in [Role::Publisher, Role::Operator, Role::Approver] {
            let response = send(token_of(role)).await.unwrap();
            if role == *needed {
                assert_ne!(
                    response.status(),
                    StatusCode::FORBIDDEN,
                    "{role} {method} {path}"
                );
            } else {
                assert_forbidden(response, needed.as_str()).await;
            }
        }
        let status = send(TOKEN).await.unwrap().status();
        assert_ne!(status, StatusCode::FORBIDDEN, "admin {method} {path}");
        assert!(status.is_client_error(), "admin {method} {path}: {status}");
    }
    assert_eq!(t.server.db().count_releases().await.unwrap(), 0);
}
