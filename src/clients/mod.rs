//! Clients as the server knows them apart from any one endpoint: registered clients recently read
//! from the database ([`ClientCache`]), and Client ID Metadata Documents fetched and cached
//! ([`metadata`]). The endpoints that use them are in `oauth/`.

mod cache;
pub mod metadata;

pub use cache::ClientCache;
pub use metadata::ClientMetadataFetcher;
