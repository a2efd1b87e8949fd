//! Release intake: good and hostile releases, idempotence, oversized and short uploads.

use ota_core::digest::Digest;
use ota_core::release::{FORMAT_VERSION, SignedRelease, sign};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::util::{NOW, TestServer, artifact, error_of, key, manifest, release};

#[tokio::test]
async fn good_release_is_published_listed_and_served() {
    let t = TestServer::start().await;
    let art = artifact(10_000, 1);
    let digest = Digest::of(&art);
    let rel = release("2.0.0", &art, &[1]);

    let response = t.publish(rel.clone(), art.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "published");
    assert_eq!(body["release"]["digest"], digest.to_string());
    assert_eq!(body["release"]["version"], "2.0.0");
    assert_eq!(body["release"]["size"], 10_000);
    assert_eq!(body["release"]["published_by"], "alice");
    assert_eq!(
        body["release"]["hardware"],
        serde_json::json!(["gw-a", "gw-b"])
    );

    let list: Value = t.get_json("/api/v1/releases").await;
    assert_eq!(list["releases"].as_array().unwrap().len(), 1);
    assert_eq!(list["releases"][0]["digest"], digest.to_string());

    let one: Value = t.get_json(&format!("/api/v1/releases/{digest}")).await;
    assert_eq!(one["signers"].as_array().unwrap().len(), 1);

    let served = t
        .client
        .get(t.url(&format!("/artifacts/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.bytes().await.unwrap().as_ref(), art.as_slice());

    let signed = t
        .client
        .get(t.url(&format!("/releases/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), StatusCode::OK);
    assert_eq!(signed.bytes().await.unwrap().as_ref(), rel.as_slice());

    let events = t.events_of_kind("release-published").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "alice");
    assert_eq!(events[0].details["digest"], digest.to_string());
}

#[tokio::test]
async fn same_release_twice_is_idempotent() {
    let t = TestServer::start().await;
    let art = artifact(3000, 2);
    let rel = release("1.0.0", &art, &[1]);
    assert_eq!(
        t.publish(rel.clone(), art.clone()).await.status(),
        StatusCode::CREATED
    );
    let again = t.publish(rel.clone(), art.clone()).await;
    assert_eq!(again.status(), StatusCode::OK);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["status"], "already-present");
    assert_eq!(t.server.db().count_releases().await.unwrap(), 1);
    assert_eq!(t.events_of_kind("release-published").await.len(), 1);
    // A re-upload with wrong bytes is still verified, and refused.
    let mut wrong = art.clone();
    wrong[0] ^= 1;
    let (status, cause) = error_of(t.publish(rel, wrong).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "digest-mismatch")
    );
}

#[tokio::test]
async fn different_release_for_a_published_artifact_conflicts() {
    let t = TestServer::start().await;
    let art = artifact(500, 3);
    assert_eq!(
        t.publish(release("1.0.0", &art, &[1]), art.clone())
            .await
            .status(),
        StatusCode::CREATED
    );
    // Another security version for the same artifact (issue 12.1: only a countersignature of
    // the same product, version and security version re-signs a published release).
    let mut m = crate::util::manifest("1.0.0", &art);
    m.security_version = 2;
    let other = ota_core::release::sign(&m, &[crate::util::key(2)]);
    let (status, cause) = error_of(t.publish(other, art.clone()).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::CONFLICT, "release-conflict")
    );
    // The same manifest signed by another trusted key is a countersignature.
    let r = t.publish(release("1.0.0", &art, &[2]), art.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Publishes a refused release and checks the cause, the audit event, and that nothing was
/// stored.
async fn assert_refused(
    t: &TestServer,
    rel: Vec<u8>,
    art: Vec<u8>,
    status: StatusCode,
    cause: &str,
) {
    let digest = Digest::of(&art);
    let (got_status, got_cause) = error_of(t.publish(rel, art).await).await;
    assert_eq!((got_status, got_cause.as_str()), (status, cause));
    assert_eq!(
        t.server.store().head(&digest).await.unwrap(),
        None,
        "{cause}: stored"
    );
    assert!(t.server.db().get_release(&digest).await.unwrap().is_none());
    let events = t.events_of_kind("release-rejected").await;
    let last = events.last().unwrap();
    assert_eq!(last.details["cause"], cause);
    assert_eq!(last.actor, "alice");
}

#[tokio::test]
async fn hostile_releases_are_refused_with_a_cause() {
    let t = TestServer::start_with(2, None).await;
    let art = artifact(1000, 4);
    let ok = StatusCode::UNPROCESSABLE_ENTITY;

    assert_refused(
        &t,
        release("1", &art, &[1]),
        art.clone(),
        ok,
        "threshold-not-met",
    )
    .await;
    assert_refused(&t, release("1", &art, &[9]), art.clone(), ok, "unknown-key").await;

    // A signature byte flipped: claims a trusted key, does not verify.
    let mut tampered = release("1", &art, &[1, 2]);
    let n = tampered.len();
    tampered[n - 1] ^= 0x01;
    assert_refused(&t, tampered, art.clone(), ok, "bad-signature").await;

    assert_refused(&t, b"not a release".to_vec(), art.clone(), ok, "malformed").await;

    let mut m = manifest("1", &art);
    m.expires = Some(NOW - 1);
    assert_refused(&t, sign(&m, &[key(1), key(2)]), art.clone(), ok, "expired").await;

    let mut m = manifest("1", &art);
    m.format_version = FORMAT_VERSION + 1;
    assert_refused(
        &t,
        sign(&m, &[key(1), key(2)]),
        art.clone(),
        ok,
        "unsupported-format",
    )
    .await;

    let mut trailing = release("1", &art, &[1, 2]);
    trailing.push(0);
    assert_refused(&t, trailing, art.clone(), ok, "trailing-data").await;

    // Valid release, wrong artifact bytes of the right size.
    let mut wrong = art.clone();
    wrong[500] ^= 0xff;
    assert_refused(
        &t,
        release("1", &art, &[1, 2]),
        wrong,
        ok,
        "digest-mismatch",
    )
    .await;

    // Short artifact.
    assert_refused(
        &t,
        release("1", &art, &[1, 2]),
        art[..999].to_vec(),
        ok,
        "size-mismatch",
    )
    .await;

    // 2 of 3 is enough.
    assert_eq!(
        t.publish(release("1", &art, &[3, 1]), art.clone())
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn oversized_uploads_are_refused() {
    let t = TestServer::start().await;
    let art = artifact(4096, 5);
    let rel = release("1", &art, &[1]);

    let mut longer = art.clone();
    longer.push(0);
    assert_refused(
        &t,
        rel.clone(),
        longer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "artifact-too-long",
    )
    .await;

    // Streamed without a length: refused at the chunk that passes the signed size.
    let chunks = vec![art[..4000].to_vec(), art[4000..].to_vec(), vec![1, 2, 3]];
    let (status, cause) = error_of(t.publish_streamed(rel.clone(), chunks).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "artifact-too-long")
    );
    assert_eq!(
        t.server.store().head(&Digest::of(&art)).await.unwrap(),
        None
    );

    // The same stream without the extra chunk is accepted.
    let chunks = vec![art[..4000].to_vec(), art[4000..].to_vec()];
    assert_eq!(
        t.publish_streamed(rel, chunks).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn oversized_release_part_is_refused() {
    let t = TestServer::start().await;
    let huge = vec![0u8; ota_core::release::Limits::MAX_RELEASE_BYTES + 1];
    let (status, cause) = error_of(t.publish(huge, vec![]).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "release-too-large")
    );
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let t = TestServer::start().await;
    let art = artifact(100, 6);
    let rel = release("1", &art, &[1]);

    // Not multipart at all.
    let response = t
        .client
        .post(t.url("/api/v1/releases"))
        .bearer_auth(crate::util::TOKEN)
        .body(rel.clone())
        .send()
        .await
        .unwrap();
    let (status, cause) = error_of(response).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::BAD_REQUEST, "bad-multipart")
    );

    // Parts in the wrong order.
    let form = Form::new()
        .part("artifact", Part::bytes(art.clone()))
        .part("release", Part::bytes(rel.clone()));
    let (status, cause) = error_of(t.publish_form(form).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::BAD_REQUEST, "bad-multipart")
    );

    // The artifact part is missing.
    let form = Form::new().part("release", Part::bytes(rel.clone()));
    let (status, cause) = error_of(t.publish_form(form).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::BAD_REQUEST, "bad-multipart")
    );

    // Malformed digests in paths.
    for path in ["/api/v1/releases/xyz", "/api/v1/releases/%ff%fe"] {
        let (status, cause) = error_of(t.get(path).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {cause}");
    }
    let (status, _) = error_of(
        t.get(&format!("/api/v1/releases/{}", Digest::of(b"nothing")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Nothing was stored by any of this.
    assert_eq!(t.server.db().count_releases().await.unwrap(), 0);
    let signed = SignedRelease::decode(&rel).unwrap();
    assert_eq!(
        t.server
            .store()
            .head(&signed.manifest.artifact_digest())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn empty_artifact_can_be_published_and_served() {
    let t = TestServer::start().await;
    let rel = release("0", &[], &[1]);
    assert_eq!(t.publish(rel, vec![]).await.status(), StatusCode::CREATED);
    let served = t
        .client
        .get(t.url(&format!("/artifacts/{}", Digest::of(b""))))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.bytes().await.unwrap().len(), 0);
}
