//! Operator tokens: 401 without one, the operator's name becomes the audit actor.

use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;

use crate::util::{BOB_TOKEN, TestServer, artifact, error_of, release};

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
        .bearer_auth(crate::util::TOKEN)
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
    let listed: serde_json::Value = t
        .get("/api/v1/releases")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["releases"][0]["published_by"], "bob");
}
