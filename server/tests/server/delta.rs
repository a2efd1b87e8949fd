//! Issue 18, delta updates at the server: a release that names a chunk index is published with
//! it (checked against the signed reference, then stored under its own digest and served like
//! an artifact); a wrong or missing index is refused with a typed error.

use ota_core::delta::{ChunkEntry, ChunkIndex, ChunkParams};
use ota_core::digest::Digest;
use ota_core::release::{ChunkIndexRef, Manifest, sign};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::util::{TestServer, artifact, error_of, key, manifest};

/// `art` cut into 16 KiB chunks (any cut within the bounds is a valid index).
fn index_of(art: &[u8]) -> ChunkIndex {
    let chunks = art
        .chunks(16 * 1024)
        .map(|c| ChunkEntry {
            len: c.len() as u32,
            sha256: Digest::of(c).0,
        })
        .collect();
    ChunkIndex::new(ChunkParams::DEFAULT, chunks).unwrap()
}

/// A release of `art` naming the index `index_bytes`, signed by key 1.
fn release_with_index(version: &str, art: &[u8], index_bytes: &[u8]) -> Vec<u8> {
    let m = Manifest {
        chunk_index: Some(ChunkIndexRef {
            sha256: Digest::of(index_bytes).0,
            size: index_bytes.len() as u64,
        }),
        ..manifest(version, art)
    };
    sign(&m, &[key(1)])
}

fn form(release: &[u8], index: Option<&[u8]>, art: &[u8]) -> Form {
    let mut form = Form::new().part("release", Part::bytes(release.to_vec()));
    if let Some(index) = index {
        form = form.part("chunk_index", Part::bytes(index.to_vec()));
    }
    form.part("artifact", Part::bytes(art.to_vec()))
}

#[tokio::test]
async fn issue18_publish_checks_the_chunk_index_and_serves_it_like_an_artifact() {
    let t = TestServer::start().await;
    let art = artifact(100_000, 7);
    let index = index_of(&art).to_cbor();
    let index_digest = Digest::of(&index);
    let rel = release_with_index("2.0.0", &art, &index);

    // Missing: the release names an index, the body goes straight to the artifact.
    let refused = error_of(t.publish_form(form(&rel, None, &art)).await).await;
    assert_eq!(
        refused,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunk-index-missing".into()
        )
    );
    // Wrong bytes: another artifact's index (other digest and size).
    let other = index_of(&artifact(50_000, 8)).to_cbor();
    let refused = error_of(t.publish_form(form(&rel, Some(&other), &art)).await).await;
    assert_eq!(
        refused,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunk-index-mismatch".into()
        )
    );
    // Same size, one byte flipped: the digest differs.
    let mut flipped = index.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let refused = error_of(t.publish_form(form(&rel, Some(&flipped), &art)).await).await;
    assert_eq!(
        refused,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunk-index-mismatch".into()
        )
    );
    // Signed, but not an index of this artifact: its artifact size differs.
    let short = index_of(&art[..60_000]).to_cbor();
    let rel_short = release_with_index("2.0.1", &art, &short);
    let refused = error_of(t.publish_form(form(&rel_short, Some(&short), &art)).await).await;
    assert_eq!(
        refused,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunk-index-invalid".into()
        )
    );
    // Signed, but not an index at all.
    let junk = b"not a chunk index".to_vec();
    let rel_junk = release_with_index("2.0.2", &art, &junk);
    let refused = error_of(t.publish_form(form(&rel_junk, Some(&junk), &art)).await).await;
    assert_eq!(
        refused,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunk-index-invalid".into()
        )
    );
    // An index part for a release that names none.
    let plain = crate::util::release("2.0.3", &art, &[1]);
    let refused = error_of(t.publish_form(form(&plain, Some(&index), &art)).await).await;
    assert_eq!(
        refused,
        (StatusCode::BAD_REQUEST, "chunk-index-unexpected".into())
    );
    // Nothing of the refused publishes was stored.
    assert_eq!(t.server.store().head(&index_digest).await.unwrap(), None);
    assert_eq!(
        t.server.store().head(&Digest::of(&art)).await.unwrap(),
        None
    );
    let rejected = t.events_of_kind("release-rejected").await;
    assert_eq!(rejected.len(), 6);
    assert_eq!(rejected[1].details["cause"], "chunk-index-mismatch");

    // The right index: published, stored under its own digest, served with Range and ETag.
    let response = t.publish_form(form(&rel, Some(&index), &art)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let listed: Value = t
        .get_json(&format!("/api/v1/releases/{}", Digest::of(&art)))
        .await;
    assert_eq!(listed["chunk_index"], index_digest.to_string());
    let events = t.events_of_kind("release-published").await;
    assert_eq!(
        events[0].details["chunk_index"]["digest"],
        index_digest.to_string()
    );

    let url = t.url(&format!("/artifacts/{index_digest}"));
    let whole = t.client.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(
        whole.headers()["etag"].to_str().unwrap(),
        format!("\"{index_digest}\"")
    );
    assert_eq!(whole.bytes().await.unwrap().as_ref(), index.as_slice());
    let part = t
        .client
        .get(&url)
        .header("Range", "bytes=6-41")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 6-41/{}", index.len())
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &index[6..42]);

    // A release without an index still publishes as before, and lists `chunk_index: null`.
    let art2 = artifact(5_000, 9);
    let plain = crate::util::release("3.0.0", &art2, &[1]);
    assert_eq!(
        t.publish(plain, art2.clone()).await.status(),
        StatusCode::CREATED
    );
    let listed: Value = t
        .get_json(&format!("/api/v1/releases/{}", Digest::of(&art2)))
        .await;
    assert!(listed["chunk_index"].is_null(), "{listed}");
}
