//! Artifact serving: Range, If-Range, ETag, 416, HEAD, If-None-Match, with reqwest.

use ota_core::digest::Digest;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_NONE_MATCH, IF_RANGE,
    RANGE,
};

use crate::util::{TestServer, artifact, error_of, release};

/// A server with one published artifact of `len` bytes.
async fn with_artifact(len: usize) -> (TestServer, Vec<u8>, String) {
    let t = TestServer::start().await;
    let art = artifact(len, 7);
    let response = t.publish(release("1.0.0", &art, &[1]), art.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let path = format!("/artifacts/{}", Digest::of(&art));
    (t, art, path)
}

fn header(r: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn full_download_has_validators() {
    let (t, art, path) = with_artifact(20_000).await;
    let etag = format!("\"{}\"", Digest::of(&art));
    let r = t.client.get(t.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, ETAG), etag);
    assert_eq!(header(&r, ACCEPT_RANGES), "bytes");
    assert_eq!(header(&r, CONTENT_LENGTH), "20000");
    assert!(header(&r, CACHE_CONTROL).contains("immutable"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), art.as_slice());
}

#[tokio::test]
async fn ranges_give_206_with_content_range() {
    let (t, art, path) = with_artifact(20_000).await;
    let cases: [(&str, std::ops::Range<usize>); 5] = [
        ("bytes=0-", 0..20_000),
        ("bytes=12345-", 12_345..20_000),
        ("bytes=100-199", 100..200),
        ("bytes=19990-99999", 19_990..20_000),
        ("bytes=-10", 19_990..20_000),
    ];
    for (range, expected) in cases {
        let r = t
            .client
            .get(t.url(&path))
            .header(RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&r, CONTENT_RANGE),
            format!("bytes {}-{}/20000", expected.start, expected.end - 1),
            "{range}"
        );
        assert_eq!(header(&r, CONTENT_LENGTH), expected.len().to_string());
        assert_eq!(r.bytes().await.unwrap().as_ref(), &art[expected], "{range}");
    }
}

#[tokio::test]
async fn if_range_applies_the_range_only_for_our_strong_etag() {
    let (t, art, path) = with_artifact(5000).await;
    let etag = format!("\"{}\"", Digest::of(&art));

    let r = t
        .client
        .get(t.url(&path))
        .header(RANGE, "bytes=4000-")
        .header(IF_RANGE, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &art[4000..]);

    for stale in [
        "\"0000000000000000000000000000000000000000000000000000000000000000\"".to_string(),
        format!("W/{etag}"),
        "Wed, 21 Oct 2015 07:28:00 GMT".to_string(),
    ] {
        let r = t
            .client
            .get(t.url(&path))
            .header(RANGE, "bytes=4000-")
            .header(IF_RANGE, &stale)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{stale}");
        assert!(r.headers().get(CONTENT_RANGE).is_none());
        assert_eq!(r.bytes().await.unwrap().as_ref(), art.as_slice());
    }
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let (t, _art, path) = with_artifact(5000).await;
    for range in ["bytes=5000-", "bytes=9999-10000", "bytes=-0"] {
        let r = t
            .client
            .get(t.url(&path))
            .header(RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, CONTENT_RANGE), "bytes */5000", "{range}");
        let (status, cause) = error_of(r).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(cause, "range-not-satisfiable");
    }
    // Unsupported forms are ignored: the whole artifact is sent.
    for range in ["bytes=0-1,5-6", "items=0-1", "bytes=9-3", "garbage"] {
        let r = t
            .client
            .get(t.url(&path))
            .header(RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{range}");
    }
}

#[tokio::test]
async fn head_and_if_none_match() {
    let (t, art, path) = with_artifact(3000).await;
    let etag = format!("\"{}\"", Digest::of(&art));

    let r = t.client.head(t.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, CONTENT_LENGTH), "3000");
    assert_eq!(header(&r, ETAG), etag);
    assert!(r.bytes().await.unwrap().is_empty());

    let r = t
        .client
        .head(t.url(&path))
        .header(RANGE, "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, CONTENT_LENGTH), "2000");
    assert_eq!(header(&r, CONTENT_RANGE), "bytes 1000-2999/3000");

    let r = t
        .client
        .get(t.url(&path))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn unknown_and_malformed_digests() {
    let t = TestServer::start().await;
    let r = t
        .client
        .get(t.url(&format!("/artifacts/{}", Digest::of(b"absent"))))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND);
    let r = t
        .client
        .get(t.url("/artifacts/not-a-digest"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "bad-digest".into())
    );
}

#[tokio::test]
async fn large_artifact_streams_in_chunks_and_resumes() {
    // Larger than one store part and many HTTP chunks.
    let (t, art, path) = with_artifact(6 * 1024 * 1024 + 123).await;
    let r = t.client.get(t.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.unwrap();
    assert_eq!(Digest::of(&body), Digest::of(&art));

    // Resume from the middle, like an interrupted download.
    let from = 5 * 1024 * 1024 + 7;
    let r = t
        .client
        .get(t.url(&path))
        .header(RANGE, format!("bytes={from}-"))
        .header(IF_RANGE, format!("\"{}\"", Digest::of(&art)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &art[from..]);
}
