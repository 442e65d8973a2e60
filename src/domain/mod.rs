//! Protocol values that can only be built valid ("parse, don't validate").

mod algorithm;
mod issuer;
mod scope;

pub use algorithm::SigningAlgorithm;
pub use issuer::{Issuer, IssuerError};
pub use scope::{ScopeError, ScopeToken};
