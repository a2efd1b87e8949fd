//! Checks of the repository itself.

use ota_e2e::workspace_root;

/// cross.toml parses and configures both gateway targets of the agent.
#[test]
fn cross_toml_names_the_gateway_targets() {
    let text = std::fs::read_to_string(workspace_root().join("cross.toml")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let targets = doc["target"].as_table().unwrap();
    for t in [
        "aarch64-unknown-linux-musl",
        "armv7-unknown-linux-musleabihf",
    ] {
        assert!(targets.contains_key(t), "cross.toml lacks target {t}");
    }
}

/// The README documents the cross build with CROSS_CONFIG (cross only reads Cross.toml itself).
#[test]
fn readme_documents_cross_config() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    assert!(readme.contains("CROSS_CONFIG=cross.toml cross build --release -p ota-agent"));
    assert!(readme.contains("cargo test --workspace"));
}
