//! Registered clients recently read from the database.

use crate::domain::Client;

/// Registered clients as read from the database, kept for a short while: every authorization,
/// code exchange and refresh names its client, and reading it each time was a database round
/// trip per request. Those three use it ([`Lookup::Cached`]), and none can create anything for a
/// removed client: issuing a code is one write guarded by the client's row (nothing is written
/// when the row is gone), removing a client revokes its grants and deletes its codes first, and
/// a refresh of a revoked grant, or an exchange of a deleted code, is refused whatever the cache
/// holds. Registered clients never change, only go. The sign-in and consent pages, client
/// credentials, revocation and introspection read the database. A client removed by this
/// instance is forgotten at once; one removed by another instance or by the CLI is dropped
/// within `ttl` (`revocation_sync_interval`). Unknown ids are not kept, so a client registered
/// elsewhere is found at once.
///
/// [`Lookup::Cached`]: crate::oauth::clients::Lookup::Cached
pub type ClientCache = crate::recent::Recent<Client>;
