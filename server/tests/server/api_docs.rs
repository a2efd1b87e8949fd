//! Issue 12.18: every JSON example of `docs/api.md` is checked against a real answer.
//!
//! Each ```` ```json ```` block of the document follows a line `<!-- example: NAME -->`; NAME
//! says which real answer (or request) it shows. The test seeds a fleet (two releases, four
//! simulated devices, a rollout baking its first wave), makes the requests, and compares each
//! example with the answer: the same keys at every level, the same JSON type for every value
//! (the first element of an array stands for all), and the same value for the keys that are
//! enumerations ([`ENUMERATED`]). A new example without a tag, an unknown tag or a drifted
//! field fails the test with the real answer printed next to it.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fleet::{Backend, World, baking_wave0, manual_clock};
use crate::util::{OPERATOR_TOKEN, TOKEN, artifact, release};

/// The document.
const API_MD: &str = include_str!("../../../docs/api.md");

/// Keys whose values are enumerations (or flags): an example shows a value the server gives.
const ENUMERATED: &[&str] = &[
    "cause",
    "status",
    "phase",
    "kind",
    "last_result",
    "installer",
    "rotated",
    "online",
    "drifted",
    "charging",
    "mains_online",
    "dry_run",
    "force_reinstall",
];

/// Keys whose values are free-form maps (any keys): only the types of their values count.
const FREE_FORM: &[&str] = &["labels", "server_labels"];

/// The tagged ```json blocks of `text`, in order: (tag, parsed example).
fn examples(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut tag: Option<String> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line == "```json" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let body = body.join("\n");
            let name = tag.take().unwrap_or_else(|| {
                panic!("docs/api.md: a ```json block without `<!-- example: NAME -->`:\n{body}")
            });
            let value = serde_json::from_str(&body).unwrap_or_else(|e| {
                panic!("docs/api.md example {name} is not JSON ({e}):\n{body}")
            });
            out.push((name, value));
        } else {
            tag = line
                .strip_prefix("<!-- example: ")
                .and_then(|rest| rest.strip_suffix(" -->"))
                .map(str::to_owned);
        }
    }
    out
}

/// The JSON type of `v`.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Appends to `errors` every difference of example `doc` from answer `real` at `path`.
fn compare(path: &str, doc: &Value, real: &Value, errors: &mut Vec<String>) {
    match (doc, real) {
        (Value::Object(d), Value::Object(r))
            if FREE_FORM.iter().any(|k| path.ends_with(&format!(".{k}"))) =>
        {
            if let Some(first) = r.values().next() {
                for (key, dv) in d {
                    compare(&format!("{path}.{key}"), dv, first, errors);
                }
            }
        }
        (Value::Object(d), Value::Object(r)) => {
            for key in d.keys().filter(|k| !r.contains_key(*k)) {
                errors.push(format!("{path}.{key}: in the example, not in the answer"));
            }
            for key in r.keys().filter(|k| !d.contains_key(*k)) {
                errors.push(format!("{path}.{key}: in the answer, not in the example"));
            }
            for (key, dv) in d {
                let Some(rv) = r.get(key) else { continue };
                let here = format!("{path}.{key}");
                if ENUMERATED.contains(&key.as_str())
                    && (dv.is_string() || dv.is_boolean())
                    && dv != rv
                {
                    errors.push(format!("{here}: the example says {dv}, the answer {rv}"));
                }
                compare(&here, dv, rv, errors);
            }
        }
        (Value::Array(d), Value::Array(r)) => match r.first() {
            Some(first) => {
                for element in d {
                    compare(&format!("{path}[]"), element, first, errors);
                }
            }
            None if d.is_empty() => {}
            None => errors.push(format!("{path}: the answer's array is empty (seed it)")),
        },
        _ if kind(doc) != kind(real) => errors.push(format!(
            "{path}: the example has {}, the answer {}",
            kind(doc),
            kind(real)
        )),
        _ => {}
    }
}

/// Answers `method path` (as `token`, with `body`): status and JSON.
async fn call(
    w: &World,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = w.t.client.request(method, w.t.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_every_json_example_of_api_md_matches_a_real_answer() {
    let docs = examples(API_MD);
    assert!(docs.len() >= 8, "the examples of docs/api.md: {docs:?}");
    let w = World::start(Backend::Embedded, manual_clock()).await;
    let (rollout, members) = baking_wave0(&w).await;
    let digest = w.new_digest();

    let mut real: BTreeMap<&str, Value> = BTreeMap::new();
    let get = |path: String| {
        let w = &w;
        async move {
            let (status, body) = call(w, TOKEN, reqwest::Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            body
        }
    };
    real.insert("release", get(format!("/api/v1/releases/{digest}")).await);
    real.insert(
        "device",
        get(format!("/api/v1/devices/{}", members[0])).await,
    );
    real.insert(
        "events",
        get("/api/v1/events?kind=release-published&limit=1".into()).await,
    );
    real.insert("trust", get("/api/v1/trust".into()).await);
    real.insert(
        "rollout",
        get(format!("/api/v1/rollouts/{rollout}")).await["rollout"].clone(),
    );
    real.insert(
        "rollout-devices",
        get(format!("/api/v1/rollouts/{rollout}/devices?limit=3")).await,
    );
    // A role that does not grant the request; a release no trusted key signed.
    let (status, forbidden) = call(
        &w,
        OPERATOR_TOKEN,
        reqwest::Method::POST,
        "/api/v1/releases",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    real.insert("error-forbidden-role", forbidden);
    let art = artifact(100, 9);
    let refused = w.t.publish(release("9.9.9", &art, &[9]), art).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    real.insert("error", refused.json().await.unwrap());

    let mut errors = Vec::new();
    for (name, doc) in &docs {
        if name == "rollout-request" {
            rollout_request(&w, &digest, doc, &mut errors).await;
            continue;
        }
        let Some(answer) = real.get(name.as_str()) else {
            errors.push(format!("unknown example tag {name:?}"));
            continue;
        };
        let before = errors.len();
        compare(name, doc, answer, &mut errors);
        if errors.len() > before {
            errors.push(format!(
                "the real answer of {name}:\n{}",
                serde_json::to_string_pretty(answer).unwrap()
            ));
        }
    }
    for name in real.keys() {
        if !docs.iter().any(|(n, _)| n == name) {
            errors.push(format!("no example {name:?} in docs/api.md"));
        }
    }
    assert!(errors.is_empty(), "docs/api.md:\n{}", errors.join("\n"));
    w.finish().await;
}

/// The `POST /api/v1/rollouts` example: accepted as written (as a dry run of this fleet's
/// release), and its values are the defaults the server applies to a bare request.
async fn rollout_request(w: &World, digest: &str, doc: &Value, errors: &mut Vec<String>) {
    let mut body = doc.clone();
    body["release"] = json!(digest);
    body["filter"] = json!(w.filter());
    body["dry_run"] = json!(true);
    let (status, answer) = call(
        w,
        TOKEN,
        reqwest::Method::POST,
        "/api/v1/rollouts",
        Some(body),
    )
    .await;
    if status != StatusCode::CREATED {
        errors.push(format!("rollout-request: {status} {answer}"));
    }
    let bare = json!({ "release": digest, "dry_run": true });
    let (status, answer) = call(
        w,
        TOKEN,
        reqwest::Method::POST,
        "/api/v1/rollouts",
        Some(bare),
    )
    .await;
    if status != StatusCode::CREATED {
        errors.push(format!("rollout-request (bare): {status} {answer}"));
        return;
    }
    let spec = &answer["rollout"]["spec"];
    for (key, value) in doc.as_object().unwrap() {
        if ["release", "filter", "dry_run"].contains(&key.as_str()) {
            continue;
        }
        if !spec.get(key).is_some_and(|v| same_value(v, value)) {
            errors.push(format!(
                "rollout-request.{key}: the example says {value}, the default is {}",
                spec.get(key).unwrap_or(&Value::Null)
            ));
        }
    }
    let before = errors.len();
    if let Some(spec) = spec.as_object() {
        // The stored spec also keeps the create answer's extras (documented under `Rollout`).
        let extras = ["excluded", "conflicts"];
        for key in spec
            .keys()
            .filter(|k| doc.get(k.as_str()).is_none() && !extras.contains(&k.as_str()))
        {
            errors.push(format!(
                "rollout-request.{key}: in the spec, not in the example"
            ));
        }
    }
    if errors.len() > before {
        errors.push(format!("the real spec: {spec}"));
    }
}

/// `a` and `b` are the same value, numbers compared as numbers (`5` is `5.0`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        _ => a == b,
    }
}

/// The parser finds tagged blocks and refuses an untagged one.
#[test]
fn issue12_api_md_examples_are_tagged() {
    let text = "<!-- example: a -->\n```json\n{\"x\": 1}\n```\n";
    assert_eq!(examples(text), vec![("a".to_owned(), json!({"x": 1}))]);
    let untagged = std::panic::catch_unwind(|| examples("text\n```json\n{}\n```\n"));
    assert!(untagged.is_err());
    let mut errors = Vec::new();
    compare(
        "device",
        &json!({"last_result": "committed", "power": {"battery": 81}}),
        &json!({"last_result": "succeeded", "power": {"battery_percent": 81},
                "reported_generation": 3}),
        &mut errors,
    );
    assert_eq!(errors.len(), 4, "{errors:?}");
}
