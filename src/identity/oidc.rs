//! The upstream leg of a sign-in at an OpenID Connect provider (OpenID Connect Core 1.0 §3.1):
//! the authorization request with PKCE S256 (RFC 7636), `state` and `nonce`; then the code
//! exchange, the ID token verified (signature against the provider's keys, fetched again once
//! when it names an unknown key; issuer, audience, expiry, nonce, `at_hash`), and userinfo when
//! the ID token lacks claims the provider's rules read.

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError,
    Scope, TokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use super::rules::{Claims, claims_needed};
use super::{IdentityProviders, Provider, ProviderError, Started, error_chain};
use crate::store::ProviderIdentity;

/// Signing algorithms accepted for ID tokens (the crate's default is RS256 alone).
const ALGORITHMS: [CoreJwsSigningAlgorithm; 7] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Every claim a provider sends, kept whole for the rules (`groups`, `hd`, `tid`, ...).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AllClaims {
    #[serde(flatten)]
    claims: Map<String, Value>,
}

impl AdditionalClaims for AllClaims {}

impl Provider {
    fn client(
        &self,
        metadata: super::Metadata,
        redirect: &Url,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        ProviderError,
    > {
        let redirect = RedirectUrl::new(redirect.as_str().to_owned())
            .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.config.client_secret.0.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: the authorization request, its `state`, `nonce` and PKCE verifier
    /// (each 128 bits or more from the system's random source, through the crate).
    pub(super) async fn start_oidc(
        &self,
        providers: &IdentityProviders,
        redirect: &Url,
    ) -> Result<Started, ProviderError> {
        let metadata = self.metadata(providers, false).await?;
        let client = self.client(metadata, redirect)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        Ok(Started {
            url,
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    /// Finishes a sign-in: exchanges `code` (with the PKCE `verifier`), verifies the ID token
    /// against `nonce`, and completes its claims from userinfo when the rules need more.
    pub(super) async fn finish_oidc(
        &self,
        providers: &IdentityProviders,
        redirect: &Url,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<(ProviderIdentity, Claims), ProviderError> {
        let http = providers.client();
        let metadata = self.metadata(providers, false).await?;
        let client = self.client(metadata, redirect)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| ProviderError::Unreachable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => ProviderError::Refused(r.to_string()),
                other => ProviderError::Unreachable(error_chain(&other)),
            })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| ProviderError::Invalid("no ID token in the answer".to_owned()))?;
        let nonce = Nonce::new(nonce.to_owned());
        let verify = |client: &CoreClient<_, _, _, _, _, _>| {
            let verifier = client.id_token_verifier().set_allowed_algs(ALGORITHMS);
            id_token.claims(&verifier, &nonce).map(|c| {
                let hash = c.access_token_hash().cloned();
                let alg = id_token.signing_alg();
                let key = id_token.signing_key(&verifier).ok().cloned();
                (c.subject().clone(), c.issuer().clone(), hash, alg, key)
            })
        };
        let verified = match verify(&client) {
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider rotated its keys since they were fetched: fetch them again, once.
                let metadata = self.metadata(providers, true).await?;
                verify(&self.client(metadata, redirect)?)
            }
            other => other,
        };
        let (subject, issuer, at_hash, alg, key) =
            verified.map_err(|e| ProviderError::Invalid(error_chain(&e)))?;
        if let Some(expected) = at_hash {
            let alg = alg.map_err(|e| ProviderError::Invalid(e.to_string()))?;
            let key = key.ok_or_else(|| ProviderError::Invalid("no key for at_hash".to_owned()))?;
            let actual = AccessTokenHash::from_token(tokens.access_token(), alg, &key)
                .map_err(|e| ProviderError::Invalid(e.to_string()))?;
            if actual != expected {
                return Err(ProviderError::Invalid(
                    "the access token does not match the ID token's at_hash".to_owned(),
                ));
            }
        }
        // The signature verified: the payload's claims are the provider's, whole.
        let mut claims = payload(&id_token.to_string())?;
        let missing = claims_needed(&self.config)
            .into_iter()
            .any(|name| !claims.contains_key(name));
        if missing {
            if let Ok(request) =
                client.user_info(tokens.access_token().clone(), Some(subject.clone()))
            {
                // Userinfo must be about the same subject (the crate checks `sub`).
                let info: UserInfoClaims<AllClaims, CoreGenderClaim> = request
                    .request_async(&http)
                    .await
                    .map_err(|e| ProviderError::Unreachable(error_chain(&e)))?;
                if let Ok(Value::Object(more)) = serde_json::to_value(&info) {
                    for (k, v) in more {
                        claims.entry(k).or_insert(v);
                    }
                }
            }
        }
        let claims = Claims(claims);
        let identity = ProviderIdentity {
            provider: self.config.id.clone(),
            issuer: issuer.as_str().to_owned(),
            subject: subject.as_str().to_owned(),
            email: claims.str("email").map(str::to_owned),
            email_verified: claims.verified_email().is_some(),
        };
        Ok((identity, claims))
    }
}

/// The claims of a JWT whose signature was verified.
fn payload(jwt: &str) -> Result<Map<String, Value>, ProviderError> {
    use base64::Engine;
    let bad = || ProviderError::Invalid("malformed ID token".to_owned());
    let part = jwt.split('.').nth(1).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| bad())?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad()),
    }
}
