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

/// Longest accepted `client_name`, in characters.
pub const MAX_CLIENT_NAME: usize = 200;

/// Characters that change how a name looks without being seen: control characters, the
/// bidirectional embeddings, overrides, isolates and marks (behind a right-to-left override, a
/// reversed string reads "Claude by Anthropic"), zero-width characters, the word joiner, the
/// byte-order mark, fillers, variation selectors, interlinear annotations and tag characters. A
/// name shown to a person deciding whom to trust may hold none of them (UTS #39 §3.1, RFC 8264
/// §7).
pub fn deceptive_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

/// Whether `name` may be a client's name: not blank, at most [`MAX_CLIENT_NAME`] characters,
/// none of them [`deceptive_char`].
pub fn acceptable_client_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.chars().count() <= MAX_CLIENT_NAME
        && !name.chars().any(deceptive_char)
}

impl Client {
    /// The name to show a person: the registered one without any [`deceptive_char`] (a name
    /// stored before they were refused is shown neutralised), if anything is left.
    pub fn display_name(&self) -> Option<String> {
        let shown: String = self
            .name
            .as_deref()?
            .chars()
            .filter(|c| !deceptive_char(*c))
            .collect();
        (!shown.trim().is_empty()).then_some(shown)
    }

    /// For a metadata-document client, the host of its `client_id` URL: what was verified by
    /// fetching the document, and so what the pages lead with (its name is self-asserted).
    pub fn verified_host(&self) -> Option<String> {
        if self.kind != ClientKind::MetadataDocument {
            return None;
        }
        url::Url::parse(&self.id)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The review's name: a right-to-left override that makes a reversed string read "Claude by
    /// Anthropic"; and the invisible characters that hide a difference.
    #[test]
    fn deceptive_names_are_refused() {
        let reversed = "\u{202E}ciporhtnA yb edualC";
        assert!(!acceptable_client_name(reversed));
        for hidden in [
            "Clau\u{200B}de",
            "Claude\u{2066}",
            "Cl\u{FEFF}aude",
            "C\u{E0041}laude",
            "a\u{0007}b",
        ] {
            assert!(!acceptable_client_name(hidden), "{hidden:?}");
        }
        assert!(acceptable_client_name("Claude"));
        assert!(acceptable_client_name("Überweisung – 東京"));
        assert!(!acceptable_client_name("   "));
        assert!(!acceptable_client_name(&"x".repeat(MAX_CLIENT_NAME + 1)));
    }
}
