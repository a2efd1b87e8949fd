//! `ota release publish | list`: the release commands that talk to a fleet server.

use std::path::PathBuf;

use clap::Args;
use ota_core::delta::ChunkIndex;
use ota_core::digest::Digest;
use ota_core::release::{Limits, SignedRelease};

use crate::api::{Api, ServerArgs, cli_error};
use crate::error::CliError;
use crate::files;
use crate::output::{out, print_json, s, short, table, time};
use crate::progress::Progress;

/// Arguments of `ota release publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The signed release file (`ota release sign --out`).
    #[arg(value_name = "RELEASE")]
    release: PathBuf,
    /// The artifact it names; uploaded streaming (constant memory), with a progress bar on a
    /// terminal.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    /// The chunk index the release names (default: RELEASE.chunks, written by `ota release
    /// sign`). Only read when the release names one.
    #[arg(long, value_name = "FILE")]
    chunk_index: Option<PathBuf>,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota release list`.
#[derive(Debug, Args)]
pub(crate) struct ListReleasesArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `ota release publish`.
pub(crate) fn publish(args: &PublishArgs) -> Result<(), CliError> {
    let api = Api::new(&args.server)?;
    let release =
        files::read_bounded(&args.release, Limits::MAX_RELEASE_BYTES as u64, "a release")?;
    // Decoding first gives a clear local error for a file that is not a release at all.
    let signed = SignedRelease::decode(&release).map_err(|error| CliError::Rejected {
        error,
        detail: format!(" (file {})", args.release.display()),
    })?;
    let index = chunk_index_of(args, &signed)?;
    let read_err = |source| CliError::Read {
        path: args.artifact.clone(),
        source,
    };
    let len = std::fs::metadata(&args.artifact).map_err(read_err)?.len();
    let artifact_path = args.artifact.clone();
    let answer = api.block_on(async {
        let file = tokio::fs::File::open(&artifact_path)
            .await
            .map_err(read_err)?;
        let progress = std::sync::Arc::new(Progress::new(Some(len), "uploading"));
        let bar = progress.clone();
        let stream = futures_util::stream::unfold(file, move |mut file| {
            let bar = bar.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; files::STREAM_BUFFER];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        bar.inc(n as u64);
                        Some((Ok::<_, std::io::Error>(buf), file))
                    }
                    Err(e) => Some((Err(e), file)),
                }
            }
        });
        let artifact =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len);
        let result = api
            .client()
            .publish_parts(release, index, artifact)
            .await
            .map_err(cli_error);
        drop(progress);
        result
    })?;
    if args.json {
        return print_json(&answer);
    }
    let r = &answer["release"];
    out(&format!(
        "{}: {} {} security_version={} sha256={} size={} (published by {})\n",
        s(&answer["status"]),
        s(&r["product"]),
        s(&r["version"]),
        s(&r["security_version"]),
        s(&r["digest"]),
        s(&r["size"]),
        s(&r["published_by"]),
    ))
}

/// The chunk index bytes to publish with `signed`: `None` when the release names no index;
/// else the `--chunk-index` file or `RELEASE.chunks`, which must be the index it names.
fn chunk_index_of(args: &PublishArgs, signed: &SignedRelease) -> Result<Option<Vec<u8>>, CliError> {
    let Some(named) = signed.manifest.chunk_index else {
        return match &args.chunk_index {
            Some(path) => Err(CliError::Usage(format!(
                "--chunk-index {}: the release names no chunk index",
                path.display()
            ))),
            None => Ok(None),
        };
    };
    let path = args
        .chunk_index
        .clone()
        .unwrap_or_else(|| crate::release_cmd::chunks_path(&args.release));
    let bytes = match files::read_bounded(&path, ChunkIndex::MAX_BYTES as u64, "a chunk index") {
        Ok(bytes) => bytes,
        Err(CliError::Read { path, source }) => {
            return Err(CliError::MissingChunkIndex { path, source });
        }
        Err(other) => return Err(other),
    };
    if bytes.len() as u64 != named.size || Digest::of(&bytes) != named.digest() {
        return Err(CliError::Usage(format!(
            "{} is not the chunk index the release names (sha256 {}, {} bytes)",
            path.display(),
            named.digest(),
            named.size
        )));
    }
    Ok(Some(bytes))
}

/// `ota release list`.
pub(crate) fn list_releases(args: &ListReleasesArgs) -> Result<(), CliError> {
    let api = Api::new(&args.server)?;
    let answer = api.get("/api/v1/releases", &[])?;
    if args.json {
        return print_json(&answer);
    }
    let rows: Vec<Vec<String>> = answer["releases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                short(&r["digest"]),
                s(&r["product"]),
                s(&r["version"]),
                s(&r["security_version"]),
                s(&r["size"]),
                r["hardware"]
                    .as_array()
                    .map(|h| h.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                time(&r["created_at"]),
                s(&r["published_by"]),
                match r["trusted"].as_bool() {
                    Some(true) => "yes".into(),
                    Some(false) => "NO (countersign)".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    out(&table(
        &[
            "SHA256",
            "PRODUCT",
            "VERSION",
            "SECVER",
            "SIZE",
            "HARDWARE",
            "PUBLISHED",
            "BY",
            "TRUSTED",
        ],
        &rows,
    ))
}
