//! Sealing: a value encrypted under a key derived from a secret, bound to a context. Used for a
//! token response kept for an idempotent replay (under the refresh token the client presented:
//! the database never holds a usable token, and only the holder of that same secret can read the
//! response back), and for private keys under the key-encryption key (`vault.rs`).
//!
//! HKDF-SHA256 (RFC 5869) derives an AES-256-GCM key from the secret; the nonce is random.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};

const SALT: &[u8] = b"gatehouse sealed token response v1";

fn key(secret: &[u8], context: &[u8]) -> Option<LessSafeKey> {
    let prk = Salt::new(HKDF_SHA256, SALT).extract(secret);
    let info = [context];
    let okm = prk.expand(&info, &AES_256_GCM).ok()?;
    Some(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Encrypts `plaintext` under a key derived from `secret`, bound to `context`.
pub fn seal(secret: &[u8], context: &[u8], plaintext: &[u8]) -> Option<String> {
    let key = key(secret, context)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).ok()?;
    let mut data = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(context),
        &mut data,
    )
    .ok()?;
    let mut out = nonce.to_vec();
    out.extend(data);
    Some(URL_SAFE_NO_PAD.encode(out))
}

/// Decrypts what [`seal`] produced; `None` for another secret or context, or tampered data.
pub fn open(secret: &[u8], context: &[u8], sealed: &str) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, data) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = data.to_vec();
    let plain = key(secret, context)?
        .open_in_place(nonce, Aad::from(context), &mut data)
        .ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_and_context_open_it() {
        let sealed = seal(b"code+verifier", b"code", b"{\"access_token\":\"x\"}").expect("seal");
        assert!(!sealed.contains("access_token"));
        assert_eq!(
            open(b"code+verifier", b"code", &sealed).as_deref(),
            Some(&b"{\"access_token\":\"x\"}"[..])
        );
        assert_eq!(open(b"code+other", b"code", &sealed), None);
        assert_eq!(open(b"code+verifier", b"refresh", &sealed), None);
        let mut tampered = sealed.clone();
        tampered.replace_range(20..21, if &sealed[20..21] == "A" { "B" } else { "A" });
        assert_eq!(open(b"code+verifier", b"code", &tampered), None);
    }
}
