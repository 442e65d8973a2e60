//! People and their browser sessions: users and passwords, sign-in throttling, typed session
//! data with CSRF tokens.

pub mod login;
pub mod session;
pub mod throttle;

pub use crate::domain::{User, Username, UsernameError};
