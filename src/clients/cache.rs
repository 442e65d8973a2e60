//! Registered clients recently read from the database.

use crate::domain::Client;

/// Registered clients as read from the database, kept for a short while: every code exchange
/// and refresh names its client, and reading it each time was a database round trip per
/// request. Only those two grants use it ([`Lookup::Cached`]), and neither can create a grant
/// for a removed client: removing a client revokes its grants and deletes its codes first, and
/// a refresh of a revoked grant, or an exchange of a deleted code, is refused whatever the cache
/// holds. Everything that could start something new for a client (`/authorize`, the sign-in
/// and consent pages, client credentials, revocation, introspection) reads the database. A
/// client removed by this instance is forgotten at once; one removed by another instance or by
/// the CLI is dropped within `ttl` (`revocation_sync_interval`). Unknown ids are not kept, so a
/// client registered elsewhere is found at once.
pub type ClientCache = crate::recent::Recent<Client>;
