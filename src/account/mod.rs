//! People and their browser sessions: the sign-in and sign-out pages, sign-in through identity
//! providers, the person's own account page, sign-in throttling, typed session data with CSRF
//! tokens. (A user is a domain value, [`crate::domain::User`]; passwords
//! are hashed by [`crate::password`].)

pub mod api_tokens;
pub mod login;
pub mod page;
pub mod provider;
pub mod reset;
pub mod session;
pub mod setup;
pub mod throttle;

pub use crate::domain::{User, Username, UsernameError};
