//! Protocol values that can only be built valid ("parse, don't validate").

mod algorithm;
mod api_token;
mod client;
mod issuer;
mod key_state;
mod redirect_uri;
mod resource;
mod scope;
mod secret;
mod user;

pub use algorithm::SigningAlgorithm;
pub use api_token::{API_TOKEN_PREFIX, NewApiToken, PresentedApiToken, is_api_token};
pub use client::{
    Client, ClientKind, MAX_CLIENT_NAME, TokenEndpointAuthMethod, acceptable_client_name,
    deceptive_char,
};
pub use issuer::{Issuer, IssuerError};
pub use key_state::KeyState;
pub use redirect_uri::{
    RedirectKind, RedirectPolicy, RedirectUri, RedirectUriError, is_loopback_host,
};
pub use resource::same_resource;
pub use scope::{ScopeError, ScopeSet, ScopeToken};
pub use secret::{Secret, SecretHash, new_grant_id, random_token};
pub use user::{User, Username, UsernameError};
