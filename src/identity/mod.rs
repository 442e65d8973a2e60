//! Sign-in through the identity providers people already have (OpenID Connect, or GitHub over
//! plain OAuth 2.0): the upstream leg, from the redirect to the provider to a verified person,
//! and the rules that admit them and grant roles. The pages and the browser session are
//! `account/provider.rs`'s.

pub mod github;
pub mod oidc;
pub mod rules;

use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{AdditionalProviderMetadata, HttpRequest, HttpResponse, ProviderMetadata};
use serde::{Deserialize, Serialize};

use crate::config::{IdentityProvider, ProviderKind};
use crate::store::ProviderIdentity;
use rules::Claims;

/// How long a provider's discovery document and keys are used before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Least time between two fetches forced by a key the provider's document did not have, so that
/// ID tokens naming unknown keys cannot make Gatehouse fetch on every sign-in.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// Largest answer read from a provider.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long one call to a provider may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What Gatehouse reads from a provider's discovery document beyond OpenID Connect's fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MoreMetadata {
    /// RFC 9207 §3: the provider puts `iss` in every authorization response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
}

impl AdditionalProviderMetadata for MoreMetadata {}

/// A provider's discovery document.
pub type Metadata = ProviderMetadata<
    MoreMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// Why the upstream leg failed. Every variant ends on a page; none signs anyone in.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached, or answered with something that is not a valid answer
    /// (discovery, token, userinfo).
    #[error("the identity provider could not be reached or answered wrongly: {0}")]
    Unreachable(String),
    /// The provider refused the code exchange (`invalid_grant`: expired or used code).
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    /// The ID token did not verify (signature, issuer, audience, expiry, nonce, `at_hash`), or
    /// userinfo named someone else.
    #[error("the identity provider's answer did not verify: {0}")]
    Invalid(String),
}

/// A sign-in sent to the provider: where to send the browser, and what to keep in the session
/// until it comes back.
#[derive(Debug, Clone)]
pub struct Started {
    /// The provider's authorization endpoint with the request.
    pub url: url::Url,
    /// `state`, to compare with the callback's.
    pub state: String,
    /// `nonce`, to compare with the ID token's (empty for GitHub, which sends none).
    pub nonce: String,
    /// The PKCE verifier, for the code exchange.
    pub verifier: String,
}

/// A provider's discovery document with its keys, when it was fetched, and when a fetch was
/// last forced by an unknown key.
#[derive(Debug, Clone)]
struct Discovered {
    metadata: Metadata,
    at: Instant,
    forced: Option<Instant>,
}

/// One configured provider and what was discovered about it.
#[derive(Debug)]
pub struct Provider {
    /// Its configuration.
    pub config: IdentityProvider,
    discovered: tokio::sync::Mutex<Option<Discovered>>,
}

/// The configured identity providers, with one HTTP client for all of them.
#[derive(Debug, Clone)]
pub struct IdentityProviders {
    http: reqwest::Client,
    providers: Vec<Arc<Provider>>,
}

impl IdentityProviders {
    /// The providers of `configs`, nothing fetched yet.
    pub fn new(configs: &[IdentityProvider]) -> Result<Self, reqwest::Error> {
        // Following redirects would let a provider's answer send Gatehouse's requests anywhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CALL_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            providers: configs
                .iter()
                .map(|config| {
                    Arc::new(Provider {
                        config: config.clone(),
                        discovered: tokio::sync::Mutex::new(None),
                    })
                })
                .collect(),
        })
    }

    /// Every provider, in configuration order.
    pub fn all(&self) -> impl Iterator<Item = &IdentityProvider> {
        self.providers.iter().map(|p| &p.config)
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.config.id == id)
    }

    /// The HTTP client the `openidconnect` crate calls providers with.
    fn client(&self) -> Http {
        Http(self.http.clone())
    }
}

/// The HTTP client of the provider calls (see [`send`]), usable by the `oauth2` and
/// `openidconnect` crates.
#[derive(Debug, Clone)]
pub(crate) struct Http(reqwest::Client);

impl Http {
    /// Calls made through `client`.
    pub(crate) fn new(client: reqwest::Client) -> Self {
        Self(client)
    }
}

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, HttpError>> + Send + 'static>,
    >;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(send(self.0.clone(), request))
    }
}

/// Sends one request to a provider: no redirects followed, at most [`MAX_RESPONSE_BYTES`] read.
pub(crate) async fn send(
    http: reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let mut response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(e.without_url().to_string()))?;
    let mut answer = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        answer = answer.header(name, value);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError(format!(
                "answer larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    answer.body(body).map_err(|e| HttpError(e.to_string()))
}

/// A failed call to a provider.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl Provider {
    /// Its discovery document and keys: the one fetched within [`METADATA_TTL`], or a new one.
    /// `refetch` (an ID token named a key the document did not have) fetches anew, unless a
    /// fetch was forced that way less than [`REFETCH_AT_MOST_EVERY`] ago.
    async fn metadata(
        &self,
        providers: &IdentityProviders,
        refetch: bool,
    ) -> Result<Metadata, ProviderError> {
        let mut discovered = self.discovered.lock().await;
        let mut forced = None;
        if let Some(d) = discovered.as_ref() {
            let recently_forced = d
                .forced
                .is_some_and(|f| f.elapsed() < REFETCH_AT_MOST_EVERY);
            if d.at.elapsed() < METADATA_TTL && (!refetch || recently_forced) {
                return Ok(d.metadata.clone());
            }
            forced = d.forced;
        }
        let issuer = openidconnect::IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
        let metadata = Metadata::discover_async(issuer, &providers.client())
            .await
            .map_err(|e| ProviderError::Unreachable(error_chain(&e)))?;
        let now = Instant::now();
        *discovered = Some(Discovered {
            metadata: metadata.clone(),
            at: now,
            forced: if refetch { Some(now) } else { forced },
        });
        Ok(metadata)
    }
}

impl Provider {
    /// Starts a sign-in: the authorization request, its `state`, `nonce` (OpenID Connect) and
    /// PKCE verifier, each 128 bits or more from the system's random source.
    pub async fn start(
        &self,
        providers: &IdentityProviders,
        redirect: &url::Url,
    ) -> Result<Started, ProviderError> {
        match self.config.kind {
            ProviderKind::Oidc => self.start_oidc(providers, redirect).await,
            ProviderKind::Github => self.start_github(redirect),
        }
    }

    /// Finishes a sign-in: exchanges `code` (with the PKCE `verifier`) and finds out who signed
    /// in, verified (`nonce`: the ID token's, for OpenID Connect).
    pub async fn finish(
        &self,
        providers: &IdentityProviders,
        redirect: &url::Url,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<(ProviderIdentity, Claims), ProviderError> {
        match self.config.kind {
            ProviderKind::Oidc => {
                self.finish_oidc(providers, redirect, code, verifier, nonce)
                    .await
            }
            ProviderKind::Github => {
                self.finish_github(providers, redirect, code, verifier)
                    .await
            }
        }
    }

    /// Whether the provider says it sends `iss` in every authorization response (RFC 9207 §3):
    /// then an answer without one is refused. GitHub publishes no metadata and sends none.
    pub async fn sends_iss(&self, providers: &IdentityProviders) -> Result<bool, ProviderError> {
        if self.config.kind == ProviderKind::Github {
            return Ok(false);
        }
        let metadata = self.metadata(providers, false).await?;
        Ok(metadata
            .additional_metadata()
            .authorization_response_iss_parameter_supported
            .unwrap_or(false))
    }
}

/// An error with its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}
