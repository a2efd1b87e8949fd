//! Fuzzes the release decoder and verifier with arbitrary bytes: they must return an error or a
//! release, never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_core::release::{Policy, SignedRelease, TrustSet};

fuzz_target!(|data: &[u8]| {
    if let Ok(release) = SignedRelease::decode(data) {
        // Re-encoding a decoded release must decode again to the same thing.
        let again = SignedRelease::decode(&release.encode());
        assert_eq!(again.as_ref(), Ok(&release));
        let key = ed25519_key();
        if let Ok(trust) = TrustSet::new(vec![key], 1) {
            let policy = Policy {
                hardware_class: Some("gw-a".into()),
                security_floor: 0,
                now: 0,
            };
            let _ = release.verify(&trust, &policy);
        }
    }
});

fn ed25519_key() -> ota_core::release::VerifyingKey {
    ota_core::release::SigningKey::from_bytes(&[1u8; 32]).verifying_key()
}
