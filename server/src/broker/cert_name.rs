//! The subject common name (CN) of an X.509 certificate: a device's identity when it connects
//! with a client certificate (what Mosquitto's `use_identity_as_username` uses too).
//!
//! A minimal, bounded DER walk: Certificate → TBSCertificate → subject Name → the first
//! `2.5.4.3` attribute. rustls has already verified the certificate chain when this runs; the
//! walk only reads, never panics, and answers `None` on anything unexpected.

/// The DER encoding of the OID 2.5.4.3 (commonName).
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0] EXPLICIT` (the certificate version).
const VERSION_TAG: u8 = 0xa0;
/// String types a CN may use: UTF8String, PrintableString, IA5String.
const STRING_TAGS: [u8; 3] = [0x0c, 0x13, 0x16];

/// One DER element: its tag and contents, and what follows it.
fn next_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers never occur on this path
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

/// The contents of the element at the start of `input` if it has tag `want`.
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, after) = next_tlv(input)?;
    (tag == want).then_some((contents, after))
}

/// The subject CN of a DER certificate, if it has one (as UTF-8).
pub(crate) fn common_name(cert_der: &[u8]) -> Option<String> {
    let (cert, _) = expect(cert_der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((tag, _, after)) = next_tlv(rest)
        && tag == VERSION_TAG
    {
        rest = after;
    }
    // serialNumber, signature algorithm, issuer, validity: skipped.
    for _ in 0..4 {
        rest = next_tlv(rest)?.2;
    }
    let (mut subject, _) = expect(rest, SEQUENCE)?;
    while !subject.is_empty() {
        let (mut rdn, after) = expect(subject, SET)?;
        subject = after;
        while !rdn.is_empty() {
            let (attribute, after) = expect(rdn, SEQUENCE)?;
            rdn = after;
            let (oid, value) = expect(attribute, OID)?;
            if oid == CN_OID {
                let (tag, text, _) = next_tlv(value)?;
                if !STRING_TAGS.contains(&tag) {
                    return None;
                }
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cn_of_a_generated_certificate_is_read() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let ca = firmware_fixtures::pki::TestCa::new(dir.path(), "t").unwrap();
        for (cert, cn) in [
            (
                ca.client_cert("gw-0001.lab_A").unwrap().cert,
                "gw-0001.lab_A",
            ),
            (ca.server_cert().unwrap().cert, "localhost"),
        ] {
            let der = CertificateDer::from_pem_file(&cert).unwrap();
            assert_eq!(common_name(&der).as_deref(), Some(cn));
            // Every truncation is refused without panicking.
            for len in 0..der.len() {
                let _ = common_name(&der[..len]);
            }
        }
        let ca_der = CertificateDer::from_pem_file(ca.ca_file()).unwrap();
        assert_eq!(common_name(&ca_der).as_deref(), Some("TEST-ONLY t CA"));
    }

    #[test]
    fn garbage_is_no_name() {
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        for len in 0..64u8 {
            let mut v = vec![0x30, len];
            v.extend(std::iter::repeat_n(0x30, usize::from(len)));
            assert_eq!(common_name(&v), None);
        }
    }
}
