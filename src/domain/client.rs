//! An OAuth client as every later step sees it, whichever way it became known: dynamic
//! registration (RFC 7591), a Client ID Metadata Document, or the operator's CLI.

use std::fmt;

use time::OffsetDateTime;

use super::redirect_uri::{RedirectKind, RedirectUri};
use super::secret::{Secret, SecretHash};

/// How a client authenticates at the token endpoint (RFC 7591 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEndpointAuthMethod {
    /// A public client: `client_id` in the body, no secret (every MCP client on a user's device).
    None,
    /// HTTP Basic with the client secret.
    ClientSecretBasic,
    /// The client secret in the form body.
    ClientSecretPost,
}

impl TokenEndpointAuthMethod {
    /// The registered name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }

    /// Parses a registered name; other methods (e.g. `private_key_jwt`) are not supported.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "none" => Some(Self::None),
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            _ => None,
        }
    }

    /// True for the methods that use a client secret.
    pub fn uses_secret(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// How the client became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Registered itself at `/register`: self-asserted, shown as unverified.
    Dynamic,
    /// Added by the operator with `gatehouse clients add`.
    Operator,
    /// Its `client_id` is an https URL whose metadata document was fetched.
    MetadataDocument,
}

impl ClientKind {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dynamic => "dynamic",
            Self::Operator => "operator",
            Self::MetadataDocument => "metadata_document",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "dynamic" => Some(Self::Dynamic),
            "operator" => Some(Self::Operator),
            "metadata_document" => Some(Self::MetadataDocument),
            _ => None,
        }
    }
}

/// A known client.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    /// `client_id`.
    pub id: String,
    /// How it became known.
    pub kind: ClientKind,
    /// `client_name` (self-asserted unless operator-registered).
    pub name: Option<String>,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<RedirectUri>,
    /// Token-endpoint authentication.
    pub auth_method: TokenEndpointAuthMethod,
    /// `grant_types`.
    pub grant_types: Vec<String>,
    /// `response_types`.
    pub response_types: Vec<String>,
    /// Registered `scope` (only scopes this server knows).
    pub scope: Option<String>,
    /// `client_uri`.
    pub client_uri: Option<String>,
    /// `logo_uri` (never fetched by the server).
    pub logo_uri: Option<String>,
    /// `application_type` (`web` or `native`).
    pub application_type: Option<String>,
    /// Hash of the client secret, for confidential clients.
    pub secret_hash: Option<SecretHash>,
    /// When it was registered (or its document first fetched).
    pub created_at: OffsetDateTime,
    /// When it last completed an authorization or token request.
    pub last_used_at: Option<OffsetDateTime>,
}

impl Client {
    /// The registered redirect URI that `requested` matches, if any (exact; any port on
    /// loopback).
    pub fn redirect_uri(&self, requested: &str) -> Option<&RedirectUri> {
        self.redirect_uris.iter().find(|r| r.matches(requested))
    }

    /// True when the client authenticates with a secret.
    pub fn is_confidential(&self) -> bool {
        self.auth_method.uses_secret()
    }

    /// Checks a presented client secret in constant time; false for public clients.
    pub fn verify_secret(&self, presented: &Secret) -> bool {
        self.secret_hash
            .as_ref()
            .is_some_and(|h| h.verify(presented))
    }

    /// True when every redirect goes to the user's own machine (the consent page warns).
    pub fn only_loopback_redirects(&self) -> bool {
        self.redirect_uris
            .iter()
            .all(|r| r.kind() == RedirectKind::Loopback)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("redirect_uris", &self.redirect_uris)
            .field("auth_method", &self.auth_method)
            .field(
                "secret_hash",
                &self.secret_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}
