//! ES256 signing (RFC 7518 §3.4) with ring: P-256 ECDSA over SHA-256, the signature the 64
//! bytes R || S, which is ring's fixed-length format. Every access token, and in gateway mode
//! every upstream request's token, is signed; ring does it in a fraction of the time of the
//! OpenSSL path josekit takes (BENCHMARKS.md). Verification stays with josekit.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::JoseError;
use josekit::jwk::Jwk;
use josekit::jws::{JwsAlgorithm, JwsSigner};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

/// An ES256 signer over a P-256 private key.
#[derive(Debug, Clone)]
pub struct Es256Signer {
    pair: Arc<EcdsaKeyPair>,
    rng: SystemRandom,
}

/// One coordinate or scalar of a P-256 JWK (RFC 7518 §6.2): 32 bytes, base64url.
fn field(jwk: &Jwk, name: &str) -> Result<Vec<u8>, JoseError> {
    let value = jwk
        .parameter(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| JoseError::InvalidKeyFormat(anyhow::anyhow!("no {name} in the key")))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| JoseError::InvalidKeyFormat(e.into()))?;
    if bytes.len() != 32 {
        return Err(JoseError::InvalidKeyFormat(anyhow::anyhow!(
            "{name} of a P-256 key is 32 bytes"
        )));
    }
    Ok(bytes)
}

impl Es256Signer {
    /// The signer of a private P-256 JWK (`kty` EC, `crv` P-256, `d`, `x`, `y`); ring checks
    /// that `d` and the public point belong together.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JoseError> {
        if jwk.key_type() != "EC" || jwk.curve() != Some("P-256") {
            return Err(JoseError::InvalidKeyFormat(anyhow::anyhow!(
                "not a P-256 key"
            )));
        }
        let private = field(jwk, "d")?;
        let mut public = vec![0x04];
        public.extend(field(jwk, "x")?);
        public.extend(field(jwk, "y")?);
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &private,
            &public,
            &rng,
        )
        .map_err(|e| JoseError::InvalidKeyFormat(anyhow::anyhow!("{e}")))?;
        Ok(Self {
            pair: Arc::new(pair),
            rng,
        })
    }
}

impl JwsSigner for Es256Signer {
    fn algorithm(&self) -> &dyn JwsAlgorithm {
        &josekit::jws::ES256
    }

    /// The key id goes in the header, which the caller writes.
    fn key_id(&self) -> Option<&str> {
        None
    }

    fn signature_len(&self) -> usize {
        64
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, JoseError> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| JoseError::InvalidSignature(anyhow::anyhow!("{e}")))
    }

    fn box_clone(&self) -> Box<dyn JwsSigner> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use josekit::jws::ES256;
    use josekit::jwt::{self, JwtPayload};

    #[test]
    fn its_tokens_verify_with_the_public_key_and_a_wrong_key_is_refused() {
        let private = Jwk::generate_ec_key(josekit::jwk::alg::ec::EcCurve::P256).expect("key");
        let public = private.to_public_key().expect("public");
        let signer = Es256Signer::from_jwk(&private).expect("signer");
        let mut payload = JwtPayload::new();
        payload.set_subject("u_1");
        let mut header = josekit::jws::JwsHeader::new();
        header.set_key_id("k1");
        let token = jwt::encode_with_signer(&payload, &header, &signer).expect("sign");
        let verifier = ES256.verifier_from_jwk(&public).expect("verifier");
        let (read, header) = jwt::decode_with_verifier(&token, &verifier).expect("verifies");
        assert_eq!(read.subject(), Some("u_1"));
        assert_eq!(header.key_id(), Some("k1"));
        assert_eq!(header.algorithm(), Some("ES256"));

        let other = Jwk::generate_ec_key(josekit::jwk::alg::ec::EcCurve::P256).expect("key");
        let verifier = ES256
            .verifier_from_jwk(&other.to_public_key().expect("public"))
            .expect("verifier");
        assert!(jwt::decode_with_verifier(&token, &verifier).is_err());

        // A private scalar that does not match the public point is refused.
        let mut mismatched = private.clone();
        let d = other.parameter("d").cloned().expect("d");
        mismatched.set_parameter("d", Some(d)).expect("set");
        assert!(Es256Signer::from_jwk(&mismatched).is_err());
        assert!(Es256Signer::from_jwk(&public).is_err(), "no private part");
    }
}
