//! Table `releases`: verified releases (manifest fields, signers, the signed bytes).

use ota_core::digest::Digest;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::events::{NewEvent, insert_event};
use super::{Db, DbError, from_json, parse_digest, ser_digest, to_i64, to_json, to_u64};

/// A release as stored (metadata; the signed bytes are fetched with
/// [`Db::get_release_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReleaseRecord {
    /// The artifact's SHA-256: the release's name everywhere.
    #[serde(serialize_with = "ser_digest")]
    pub digest: Digest,
    /// Product name.
    pub product: String,
    /// Human version string.
    pub version: String,
    /// Security version (anti-rollback).
    pub security_version: u32,
    /// Artifact size in bytes.
    pub size: u64,
    /// Compatible hardware classes.
    pub hardware: Vec<String>,
    /// Manifest creation time, unix seconds.
    pub created: u64,
    /// Manifest expiry, unix seconds.
    pub expires: Option<u64>,
    /// Installer hint.
    pub installer: Option<String>,
    /// Key ids (hex) whose signatures verified at intake.
    pub signers: Vec<String>,
    /// When it was published to this server, unix seconds.
    pub created_at: i64,
    /// The operator who published it.
    pub published_by: String,
}

impl ReleaseRecord {
    /// The record of a verified release, published at `created_at` by `published_by`.
    pub fn from_verified(
        verified: &ota_core::release::VerifiedRelease,
        created_at: i64,
        published_by: impl Into<String>,
    ) -> Self {
        let m = &verified.manifest;
        ReleaseRecord {
            digest: m.artifact_digest(),
            product: m.product.clone(),
            version: m.version.clone(),
            security_version: m.security_version,
            size: m.artifact_size,
            hardware: m.hardware.clone(),
            created: m.created,
            expires: m.expires,
            installer: m.installer.clone(),
            signers: verified.signers.iter().map(|k| k.to_string()).collect(),
            created_at,
            published_by: published_by.into(),
        }
    }
}

/// What [`Db::insert_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertOutcome {
    /// The row is new.
    Inserted,
    /// The identical release was already stored: nothing changed.
    AlreadyPresent,
}

const RELEASE_COLUMNS: &str = "digest, product, version, security_version, size, hardware, \
    created, expires, installer, signers, created_at, published_by";

fn format_release_select(tail: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SELECT {RELEASE_COLUMNS} FROM releases {tail}"))
}

fn release_from_row(row: &AnyRow) -> Result<ReleaseRecord, DbError> {
    let security_version: i64 = row.try_get("security_version")?;
    Ok(ReleaseRecord {
        digest: parse_digest(&row.try_get::<String, _>("digest")?, "release digest")?,
        product: row.try_get("product")?,
        version: row.try_get("version")?,
        security_version: u32::try_from(security_version)
            .map_err(|_| DbError::Corrupt("security_version out of range".into()))?,
        size: to_u64(row.try_get("size")?, "size")?,
        hardware: from_json(&row.try_get::<String, _>("hardware")?, "hardware")?,
        created: to_u64(row.try_get("created")?, "created")?,
        expires: row
            .try_get::<Option<i64>, _>("expires")?
            .map(|e| to_u64(e, "expires"))
            .transpose()?,
        installer: row.try_get("installer")?,
        signers: from_json(&row.try_get::<String, _>("signers")?, "signers")?,
        created_at: row.try_get("created_at")?,
        published_by: row.try_get("published_by")?,
    })
}

impl Db {
    /// Stores a verified release and, in the same transaction, `event`. Idempotent: the same
    /// bytes again give [`InsertOutcome::AlreadyPresent`] (and no event); different bytes for
    /// the same artifact digest give [`DbError::ReleaseConflict`].
    pub async fn insert_release(
        &self,
        release: &ReleaseRecord,
        bytes: &[u8],
        event: Option<&NewEvent>,
    ) -> Result<InsertOutcome, DbError> {
        let digest = release.digest.to_string();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO releases (digest, product, version, security_version, size, hardware, \
             created, expires, installer, signers, release_bytes, created_at, published_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&digest)
        .bind(&release.product)
        .bind(&release.version)
        .bind(i64::from(release.security_version))
        .bind(to_i64(release.size, "release size")?)
        .bind(to_json(&release.hardware))
        .bind(to_i64(release.created, "release created")?)
        .bind(
            release
                .expires
                .map(|e| to_i64(e, "release expires"))
                .transpose()?,
        )
        .bind(release.installer.as_deref())
        .bind(to_json(&release.signers))
        .bind(bytes)
        .bind(release.created_at)
        .bind(&release.published_by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing: Vec<u8> =
                sqlx::query_scalar("SELECT release_bytes FROM releases WHERE digest = $1")
                    .bind(&digest)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return if existing == bytes {
                Ok(InsertOutcome::AlreadyPresent)
            } else {
                Err(DbError::ReleaseConflict(release.digest))
            };
        }
        let mut committed = Vec::new();
        if let Some(event) = event {
            committed.push(insert_event(&mut tx, event).await?);
        }
        tx.commit().await?;
        self.notify(&committed);
        Ok(InsertOutcome::Inserted)
    }

    /// Replaces the signed bytes and manifest metadata of the release of artifact
    /// `release.digest` with a countersigned envelope of the same product, version, security
    /// version and size (signatures by the keys in force after a rotation), and stores `event`
    /// with it. [`DbError::ReleaseConflict`] if the stored release differs in any of those.
    pub async fn resign_release(
        &self,
        release: &ReleaseRecord,
        bytes: &[u8],
        event: &NewEvent,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE releases SET release_bytes = $1, signers = $2, hardware = $3, created = $4, \
             expires = $5, installer = $6 \
             WHERE digest = $7 AND product = $8 AND version = $9 AND security_version = $10 \
             AND size = $11",
        )
        .bind(bytes)
        .bind(to_json(&release.signers))
        .bind(to_json(&release.hardware))
        .bind(to_i64(release.created, "release created")?)
        .bind(
            release
                .expires
                .map(|e| to_i64(e, "release expires"))
                .transpose()?,
        )
        .bind(release.installer.as_deref())
        .bind(release.digest.to_string())
        .bind(&release.product)
        .bind(&release.version)
        .bind(i64::from(release.security_version))
        .bind(to_i64(release.size, "release size")?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await?;
            return Err(DbError::ReleaseConflict(release.digest));
        }
        let committed = vec![insert_event(&mut tx, event).await?];
        tx.commit().await?;
        self.notify(&committed);
        Ok(())
    }

    /// A release of `product` and `version` for another artifact than `digest`, if one is
    /// published.
    pub async fn other_release_of_version(
        &self,
        product: &str,
        version: &str,
        digest: &Digest,
    ) -> Result<Option<ReleaseRecord>, DbError> {
        let row = sqlx::query(format_release_select(
            "WHERE product = $1 AND version = $2 AND digest <> $3 ORDER BY created_at LIMIT 1",
        ))
        .bind(product)
        .bind(version)
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(release_from_row).transpose()
    }

    /// The release of artifact `digest`.
    pub async fn get_release(&self, digest: &Digest) -> Result<Option<ReleaseRecord>, DbError> {
        let row = sqlx::query(format_release_select("WHERE digest = $1"))
            .bind(digest.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(release_from_row).transpose()
    }

    /// The signed release bytes of artifact `digest`, exactly as uploaded.
    pub async fn get_release_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT release_bytes FROM releases WHERE digest = $1")
                .bind(digest.to_string())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Every release, newest first.
    pub async fn list_releases(&self) -> Result<Vec<ReleaseRecord>, DbError> {
        let rows = sqlx::query(format_release_select(
            "ORDER BY created_at DESC, created DESC, digest",
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(release_from_row).collect()
    }

    /// How many releases are published.
    pub async fn count_releases(&self) -> Result<u64, DbError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM releases")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
