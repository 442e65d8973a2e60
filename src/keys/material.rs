//! Key generation, RFC 7638 thumbprints, and the public members of a JWK.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jwk::Jwk;
use josekit::jwk::alg::ec::EcCurve;
use josekit::jwk::alg::ed::EdCurve;
use serde_json::{Map, Value};

use crate::domain::SigningAlgorithm;

/// Generates a new private key (a JWK holding both halves) for `alg`.
pub fn generate(alg: SigningAlgorithm) -> Result<Jwk, josekit::JoseError> {
    match alg {
        SigningAlgorithm::ES256 => Jwk::generate_ec_key(EcCurve::P256),
        SigningAlgorithm::EdDSA => Jwk::generate_ed_key(EdCurve::Ed25519),
        SigningAlgorithm::RS256 => Jwk::generate_rsa_key(2048),
    }
}

/// The members that make up the public key, per key type (RFC 7518 §6, RFC 8037 §2).
fn public_member_names(kty: &str) -> Option<&'static [&'static str]> {
    match kty {
        "EC" => Some(&["crv", "kty", "x", "y"]),
        "OKP" => Some(&["crv", "kty", "x"]),
        "RSA" => Some(&["e", "kty", "n"]),
        _ => None,
    }
}

fn string_member<'a>(jwk: &'a Jwk, name: &str) -> Option<&'a str> {
    match jwk.parameter(name) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url): the required public members in
/// lexicographic order, serialized without whitespace. Used as the `kid`, so a key's id is
/// derived from the key itself and cannot drift.
pub fn thumbprint(jwk: &Jwk) -> Option<String> {
    let names = public_member_names(jwk.key_type())?;
    let mut members = BTreeMap::new();
    for name in names {
        let value = if *name == "kty" {
            jwk.key_type()
        } else {
            string_member(jwk, name)?
        };
        members.insert(*name, value);
    }
    let canonical = serde_json::to_string(&members).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    Some(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

/// The public JWK to publish: an allow-list of public members plus `kid`, `alg` and
/// `use: "sig"`. Being an allow-list, it cannot leak `d`, `p`, `q`, `dp`, `dq`, `qi` or `k`.
pub fn public_jwk(jwk: &Jwk, kid: &str, alg: SigningAlgorithm) -> Option<Map<String, Value>> {
    let names = public_member_names(jwk.key_type())?;
    let mut out = Map::new();
    for name in names {
        let value = if *name == "kty" {
            jwk.key_type()
        } else {
            string_member(jwk, name)?
        };
        out.insert((*name).to_owned(), Value::String(value.to_owned()));
    }
    out.insert("kid".to_owned(), Value::String(kid.to_owned()));
    out.insert("alg".to_owned(), Value::String(alg.as_str().to_owned()));
    out.insert("use".to_owned(), Value::String("sig".to_owned()));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1's worked example.
    #[test]
    fn rfc_7638_example_thumbprint() {
        let jwk = Jwk::from_bytes(br#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn public_jwk_has_no_private_members_for_any_algorithm() {
        for alg in [
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::RS256,
        ] {
            let private = generate(alg).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                private.parameter("d").is_some(),
                "{alg}: generated key holds its private half"
            );
            let kid = thumbprint(&private).unwrap_or_else(|| panic!("{alg}: thumbprint"));
            let public = public_jwk(&private, &kid, alg).unwrap_or_else(|| panic!("{alg}: public"));
            for member in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
                assert!(!public.contains_key(member), "{alg}: {member} leaked");
            }
            assert_eq!(public["kid"], kid.as_str());
            assert_eq!(public["use"], "sig");
            assert_eq!(public["alg"], alg.as_str());
        }
    }
}
