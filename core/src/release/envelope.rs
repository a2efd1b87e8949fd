//! The COSE_Sign envelope (RFC 9052 §4.1, CBOR tag 98) around the manifest.
//!
//! ```text
//! 98([ protected: bstr .cbor {3: "application/vnd.ota.manifest+cbor"},
//!      unprotected: {},
//!      payload: bstr .cbor Manifest,
//!      signatures: [ [ protected: bstr .cbor {1: -8}, unprotected: {4: kid}, signature: bstr(64) ], ... ] ])
//! ```

use alloc::vec::Vec;

use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};

use super::{Limits, Manifest, ReleaseError};

/// CBOR tag of a COSE_Sign structure.
pub(crate) const COSE_SIGN_TAG: u64 = 98;
/// COSE header label `alg`.
const HDR_ALG: i64 = 1;
/// COSE header label `crit`.
const HDR_CRIT: i64 = 2;
/// COSE header label `content type`.
const HDR_CONTENT_TYPE: i64 = 3;
/// COSE header label `kid`.
const HDR_KID: i64 = 4;
/// COSE algorithm identifier of EdDSA.
pub(crate) const ALG_EDDSA: i64 = -8;
/// The content type the body's protected header names.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.ota.manifest+cbor";

/// One COSE_Signature of a release, as decoded (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    /// The signature's serialized protected header (`{1: -8}`), covered by the signature.
    pub protected: Vec<u8>,
    /// The key id from the unprotected header (see [`super::KeyId`]).
    pub kid: Vec<u8>,
    /// The 64-byte ed25519 signature.
    pub signature: [u8; 64],
}

/// A decoded, not yet verified release: the manifest and its signatures.
///
/// Obtain one with [`SignedRelease::decode`], then call [`SignedRelease::verify`]; nothing in it
/// may be trusted before that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRelease {
    /// The body's serialized protected header, covered by every signature.
    pub body_protected: Vec<u8>,
    /// The manifest's CBOR bytes exactly as signed.
    pub payload: Vec<u8>,
    /// The manifest decoded from `payload` (unverified until `verify` succeeds).
    pub manifest: Manifest,
    /// The signatures, in envelope order.
    pub signatures: Vec<SignatureEntry>,
}

/// A decoded COSE_Sign envelope, borrowing from the input: the shared part of a release and a
/// trust-set update.
pub(crate) struct Envelope<'a> {
    pub(crate) body_protected: &'a [u8],
    pub(crate) payload: &'a [u8],
    pub(crate) signatures: Vec<SignatureEntry>,
}

impl<'a> Envelope<'a> {
    /// Decodes an envelope whose body names `content_type`, bounded by [`Limits`].
    pub(crate) fn decode(bytes: &'a [u8], content_type: &str) -> Result<Self, ReleaseError> {
        if bytes.len() > Limits::MAX_RELEASE_BYTES {
            return Err(ReleaseError::LimitExceeded {
                what: "release",
                limit: Limits::MAX_RELEASE_BYTES,
            });
        }
        let mut d = Decoder::new(bytes);
        let tag = d
            .tag()
            .map_err(|_| malformed("not a COSE_Sign envelope (tag 98)"))?;
        if tag.as_u64() != COSE_SIGN_TAG {
            return Err(malformed("not a COSE_Sign envelope (tag 98)"));
        }
        expect_array(&mut d, 4, "COSE_Sign is not an array of 4")?;
        let body_protected = d.bytes().map_err(|_| malformed("body protected header"))?;
        check_body_header(body_protected, content_type)?;
        skip_header_map(&mut d)?;
        let payload = d
            .bytes()
            .map_err(|_| malformed("payload missing or detached"))?;
        let count = definite(d.array(), "signature list")?;
        if count > Limits::MAX_SIGNATURES as u64 {
            return Err(ReleaseError::LimitExceeded {
                what: "signature count",
                limit: Limits::MAX_SIGNATURES,
            });
        }
        let mut signatures = Vec::new();
        for _ in 0..count {
            signatures.push(decode_signature(&mut d)?);
        }
        let rest = bytes.len().saturating_sub(d.position());
        if rest != 0 {
            return Err(ReleaseError::TrailingData(rest));
        }
        Ok(Envelope {
            body_protected,
            payload,
            signatures,
        })
    }
}

/// Encodes a COSE_Sign envelope.
pub(crate) fn encode_envelope(
    body_protected: &[u8],
    payload: &[u8],
    signatures: &[SignatureEntry],
) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    // Writing to a Vec is infallible; the results are ignored for that reason only.
    let _ = e
        .tag(Tag::new(COSE_SIGN_TAG))
        .and_then(|e| e.array(4))
        .and_then(|e| e.bytes(body_protected))
        .and_then(|e| e.map(0))
        .and_then(|e| e.bytes(payload))
        .and_then(|e| e.array(signatures.len() as u64));
    for s in signatures {
        let _ = e
            .array(3)
            .and_then(|e| e.bytes(&s.protected))
            .and_then(|e| e.map(1))
            .and_then(|e| e.i64(HDR_KID))
            .and_then(|e| e.bytes(&s.kid))
            .and_then(|e| e.bytes(&s.signature));
    }
    e.into_writer()
}

impl SignedRelease {
    /// Decodes a release, bounded by [`Limits`]: hostile bytes give an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let envelope = Envelope::decode(bytes, CONTENT_TYPE)?;
        let manifest = Manifest::from_cbor(envelope.payload)?;
        Ok(SignedRelease {
            body_protected: envelope.body_protected.to_vec(),
            payload: envelope.payload.to_vec(),
            manifest,
            signatures: envelope.signatures,
        })
    }

    /// Encodes the release back to bytes (the same bytes it was decoded from, for a canonical
    /// release).
    pub fn encode(&self) -> Vec<u8> {
        encode_envelope(&self.body_protected, &self.payload, &self.signatures)
    }

    /// The bytes a signer signs and a verifier checks: the COSE `Sig_structure`
    /// `["Signature", body_protected, sign_protected, external_aad = h'', payload]`.
    pub fn to_be_signed(&self, sign_protected: &[u8]) -> Vec<u8> {
        sig_structure(&self.body_protected, sign_protected, &self.payload)
    }
}

/// Builds the COSE `Sig_structure` for one signature.
pub(crate) fn sig_structure(
    body_protected: &[u8],
    sign_protected: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    let _ = e
        .array(5)
        .and_then(|e| e.str("Signature"))
        .and_then(|e| e.bytes(body_protected))
        .and_then(|e| e.bytes(sign_protected))
        .and_then(|e| e.bytes(&[]))
        .and_then(|e| e.bytes(payload));
    e.into_writer()
}

/// The serialized body protected header naming `content_type`.
pub(crate) fn body_protected_header(content_type: &str) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    let _ = e
        .map(1)
        .and_then(|e| e.i64(HDR_CONTENT_TYPE))
        .and_then(|e| e.str(content_type));
    e.into_writer()
}

/// The serialized signature protected header this build writes (`{1: -8}`).
pub(crate) fn signature_protected_header() -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    let _ = e
        .map(1)
        .and_then(|e| e.i64(HDR_ALG))
        .and_then(|e| e.i64(ALG_EDDSA));
    e.into_writer()
}

fn malformed(what: &'static str) -> ReleaseError {
    ReleaseError::Malformed(what)
}

fn definite(
    len: Result<Option<u64>, minicbor::decode::Error>,
    what: &'static str,
) -> Result<u64, ReleaseError> {
    match len {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(malformed("indefinite-length item")),
        Err(_) => Err(malformed(what)),
    }
}

fn expect_array(d: &mut Decoder<'_>, n: u64, what: &'static str) -> Result<(), ReleaseError> {
    if definite(d.array(), what)? == n {
        Ok(())
    } else {
        Err(malformed(what))
    }
}

/// Checks the body's protected header: a map naming `content_type` (which separates releases
/// from trust-set updates signed by the same keys), with no critical headers we would have to
/// understand.
fn check_body_header(bytes: &[u8], content_type: &str) -> Result<(), ReleaseError> {
    let mut d = Decoder::new(bytes);
    let n = definite(d.map(), "protected header is not a map")?;
    let mut found = false;
    for _ in 0..n {
        let label = d.i64().map_err(|_| malformed("protected header label"))?;
        match label {
            HDR_CRIT => return Err(malformed("unsupported critical header")),
            HDR_CONTENT_TYPE => {
                let named = d.str().map_err(|_| malformed("content type is not text"))?;
                if named != content_type {
                    return Err(malformed("wrong content type for this kind of document"));
                }
                found = true;
            }
            _ => d.skip().map_err(|_| malformed("protected header value"))?,
        }
    }
    if d.position() != bytes.len() {
        return Err(malformed("bytes after the protected header"));
    }
    if !found {
        return Err(malformed("protected header names no content type"));
    }
    Ok(())
}

/// Skips an unprotected header map (nothing in it is trusted).
fn skip_header_map(d: &mut Decoder<'_>) -> Result<(), ReleaseError> {
    let n = definite(d.map(), "unprotected header is not a map")?;
    for _ in 0..n {
        d.skip().map_err(|_| malformed("unprotected header"))?;
        d.skip().map_err(|_| malformed("unprotected header"))?;
    }
    Ok(())
}

fn decode_signature(d: &mut Decoder<'_>) -> Result<SignatureEntry, ReleaseError> {
    expect_array(d, 3, "COSE_Signature is not an array of 3")?;
    let protected = d
        .bytes()
        .map_err(|_| malformed("signature protected header"))?;
    check_signature_header(protected)?;
    let mut kid = None;
    let n = definite(d.map(), "signature unprotected header is not a map")?;
    for _ in 0..n {
        match d.datatype() {
            Ok(
                Type::U8
                | Type::U16
                | Type::U32
                | Type::U64
                | Type::I8
                | Type::I16
                | Type::I32
                | Type::I64,
            ) => {
                let label = d.i64().map_err(|_| malformed("header label"))?;
                if label == HDR_KID {
                    let k = d
                        .bytes()
                        .map_err(|_| malformed("kid is not a byte string"))?;
                    if k.len() > Limits::MAX_KEY_ID_BYTES {
                        return Err(ReleaseError::LimitExceeded {
                            what: "key id",
                            limit: Limits::MAX_KEY_ID_BYTES,
                        });
                    }
                    kid = Some(k.to_vec());
                } else {
                    d.skip().map_err(|_| malformed("header value"))?;
                }
            }
            _ => {
                d.skip().map_err(|_| malformed("header label"))?;
                d.skip().map_err(|_| malformed("header value"))?;
            }
        }
    }
    let sig = d.bytes().map_err(|_| malformed("signature bytes"))?;
    let signature: [u8; 64] = sig
        .try_into()
        .map_err(|_| malformed("an ed25519 signature is 64 bytes"))?;
    Ok(SignatureEntry {
        protected: protected.to_vec(),
        kid: kid.ok_or(malformed("signature without a key id"))?,
        signature,
    })
}

/// A signature's protected header must name EdDSA and nothing critical.
fn check_signature_header(bytes: &[u8]) -> Result<(), ReleaseError> {
    let mut d = Decoder::new(bytes);
    let n = definite(d.map(), "signature protected header is not a map")?;
    let mut alg = None;
    for _ in 0..n {
        let label = d.i64().map_err(|_| malformed("signature header label"))?;
        match label {
            HDR_ALG => alg = Some(d.i64().map_err(|_| malformed("alg is not an integer"))?),
            HDR_CRIT => return Err(malformed("unsupported critical header")),
            _ => d.skip().map_err(|_| malformed("signature header value"))?,
        }
    }
    if d.position() != bytes.len() {
        return Err(malformed("bytes after the signature protected header"));
    }
    match alg {
        Some(ALG_EDDSA) => Ok(()),
        Some(other) => Err(ReleaseError::UnsupportedAlgorithm(other)),
        None => Err(malformed("signature without an algorithm")),
    }
}
