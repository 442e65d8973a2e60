//! The upstream leg of a sign-in at GitHub (or GitHub Enterprise Server), which has no OpenID
//! Connect: the authorization code with PKCE S256 (RFC 7636) and `state` over plain OAuth 2.0,
//! then who the person is from GitHub's REST API. The account is keyed by the numeric user id
//! (a login can be renamed and taken by someone else); the email counts as verified only when
//! it is the primary address and GitHub says it is verified; organisations are the ones the
//! rules name where the membership is active (a pending invitation is not membership).

use http::{HeaderValue, Method, StatusCode};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use serde::Deserialize;
use serde_json::{Map, json};
use url::Url;

use super::rules::Claims;
use super::{IdentityProviders, Provider, ProviderError, Started, error_chain, send};
use crate::config::ORGS_CLAIM;
use crate::store::ProviderIdentity;

/// GitHub's REST API version these calls are written for.
const API_VERSION: &str = "2022-11-28";

type GithubClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// `GET /user` (the fields read).
#[derive(Debug, Deserialize)]
struct GithubUser {
    id: u64,
    login: String,
    #[serde(default)]
    name: Option<String>,
}

/// One entry of `GET /user/emails`.
#[derive(Debug, Deserialize)]
struct GithubEmail {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

/// `GET /user/memberships/orgs/{org}` (the field read).
#[derive(Debug, Deserialize)]
struct Membership {
    state: String,
}

/// An error answer of GitHub's token endpoint, which it sends with status 200.
#[derive(Debug, Deserialize)]
struct TokenError {
    error: String,
}

impl Provider {
    fn github_client(&self, redirect: &Url) -> Result<GithubClient, ProviderError> {
        let web = self.config.issuer.trim_end_matches('/');
        let bad = |e: url::ParseError| ProviderError::Unreachable(e.to_string());
        Ok(
            BasicClient::new(ClientId::new(self.config.client_id.clone()))
                .set_client_secret(ClientSecret::new(self.config.client_secret.0.clone()))
                .set_auth_uri(AuthUrl::new(format!("{web}/login/oauth/authorize")).map_err(bad)?)
                .set_token_uri(
                    TokenUrl::new(format!("{web}/login/oauth/access_token")).map_err(bad)?,
                )
                .set_redirect_uri(RedirectUrl::new(redirect.as_str().to_owned()).map_err(bad)?)
                // GitHub documents the client credentials as form parameters.
                .set_auth_type(AuthType::RequestBody),
        )
    }

    /// Starts a sign-in at GitHub: the authorization request with its `state` and PKCE
    /// verifier (no nonce: there is no ID token).
    pub(super) fn start_github(&self, redirect: &Url) -> Result<Started, ProviderError> {
        let client = self.github_client(redirect)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state) = request.url();
        Ok(Started {
            url,
            state: state.secret().clone(),
            nonce: String::new(),
            verifier: verifier.secret().clone(),
        })
    }

    /// Finishes a sign-in at GitHub: exchanges `code` with the PKCE `verifier`, then reads the
    /// user, their emails and the memberships the rules ask about.
    pub(super) async fn finish_github(
        &self,
        providers: &IdentityProviders,
        redirect: &Url,
        code: &str,
        verifier: &str,
    ) -> Result<(ProviderIdentity, Claims), ProviderError> {
        let client = self.github_client(redirect)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&providers.client())
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => ProviderError::Refused(r.to_string()),
                // GitHub answers a bad or used code with status 200 and an error body.
                RequestTokenError::Parse(_, body) => {
                    match serde_json::from_slice::<TokenError>(&body) {
                        Ok(refused) => ProviderError::Refused(refused.error),
                        Err(_) => ProviderError::Unreachable(
                            "the token endpoint's answer is not a token".to_owned(),
                        ),
                    }
                }
                other => ProviderError::Unreachable(error_chain(&other)),
            })?;
        let token = tokens.access_token().secret();

        let (status, body) = self.api(providers, token, "/user").await?;
        if status != StatusCode::OK {
            return Err(ProviderError::Unreachable(format!(
                "GET /user answered {status}"
            )));
        }
        let user: GithubUser = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Unreachable(format!("GET /user: {e}")))?;
        if user.id == 0 {
            return Err(ProviderError::Invalid("GitHub user id 0".to_owned()));
        }

        // Without the `user:email` grant (a GitHub App without the permission) the list is
        // refused: then there is no verified email, which only rules on email need.
        let (status, body) = self.api(providers, token, "/user/emails").await?;
        let primary = match status {
            StatusCode::OK => serde_json::from_slice::<Vec<GithubEmail>>(&body)
                .map_err(|e| ProviderError::Unreachable(format!("GET /user/emails: {e}")))?
                .into_iter()
                .find(|e| e.primary),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => None,
            other => {
                return Err(ProviderError::Unreachable(format!(
                    "GET /user/emails answered {other}"
                )));
            }
        };

        let mut orgs = Vec::new();
        for org in self.config.github_orgs() {
            let path = format!("/user/memberships/orgs/{org}");
            let (status, body) = self.api(providers, token, &path).await?;
            match status {
                StatusCode::OK => {
                    let membership: Membership = serde_json::from_slice(&body)
                        .map_err(|e| ProviderError::Unreachable(format!("GET {path}: {e}")))?;
                    if membership.state == "active" {
                        orgs.push(org);
                    }
                }
                // Not a member, or the organisation does not let this app see it.
                StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => {}
                other => {
                    return Err(ProviderError::Unreachable(format!(
                        "GET {path} answered {other}"
                    )));
                }
            }
        }

        let subject = user.id.to_string();
        let (email, verified) = match primary {
            Some(p) => (Some(p.email), p.verified),
            None => (None, false),
        };
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(subject));
        claims.insert("login".into(), json!(user.login));
        claims.insert("preferred_username".into(), json!(user.login));
        if let Some(name) = user.name {
            claims.insert("name".into(), json!(name));
        }
        if let Some(email) = &email {
            claims.insert("email".into(), json!(email));
        }
        claims.insert("email_verified".into(), json!(verified));
        claims.insert(ORGS_CLAIM.into(), json!(orgs));
        let identity = ProviderIdentity {
            provider: self.config.id.clone(),
            issuer: self.config.issuer.clone(),
            subject,
            email,
            email_verified: verified,
        };
        Ok((identity, Claims(claims)))
    }

    /// `GET {api}{path}` with the person's token: the status and body (at most the provider
    /// answer limit; no redirect followed).
    async fn api(
        &self,
        providers: &IdentityProviders,
        token: &str,
        path: &str,
    ) -> Result<(StatusCode, Vec<u8>), ProviderError> {
        let api = self.config.api_url.as_deref().unwrap_or_default();
        let bad = |e: &dyn std::fmt::Display| ProviderError::Unreachable(e.to_string());
        let authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| bad(&e))?;
        let request = http::Request::builder()
            .method(Method::GET)
            .uri(format!("{api}{path}"))
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::ACCEPT, "application/vnd.github+json")
            // GitHub refuses API requests without a User-Agent.
            .header(http::header::USER_AGENT, "Gatehouse")
            .header("X-GitHub-Api-Version", API_VERSION)
            .body(Vec::new())
            .map_err(|e| bad(&e))?;
        let response = send(providers.http.clone(), request)
            .await
            .map_err(|e| ProviderError::Unreachable(format!("GET {path}: {e}")))?;
        Ok((response.status(), response.into_body()))
    }
}
