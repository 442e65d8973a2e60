//! The people behind MCP requests, as the resource side needs them: their name and roles, for
//! `whoami`, the role rules of `mcp.tool_access` and an upstream's identity. Read from the
//! database at most once per `revocation_sync_interval` per person ([`Recent`]): a call is one
//! lookup in memory instead of a database round trip. A change made by the CLI or another
//! instance (roles, removal) reaches the resource side within that interval, the bound a
//! revocation made elsewhere already has; a removed person's grants are revoked besides, so
//! their tokens stop through the revocation view. The password hash is never kept here.

use std::time::Duration;

use crate::recent::Recent;
use crate::store::{Store, StoreError};

/// A user as the resource side sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Their user name.
    pub username: String,
    /// Their roles.
    pub roles: Vec<String>,
}

/// Users recently read for MCP requests.
#[derive(Debug)]
pub struct Users(Recent<Known>);

impl Users {
    /// Users kept `ttl` after each read.
    pub fn new(ttl: Duration) -> Self {
        Self(Recent::new(ttl))
    }

    /// Forgets `id` (its roles or lock changed here): the next request reads it again.
    pub fn forget(&self, id: &str) {
        self.0.forget(id);
    }

    /// The person behind `principal`: the one a trusted proxy named, else the user of its
    /// subject (see [`Users::get`]).
    pub async fn of(
        &self,
        store: &Store,
        principal: &super::verify::Principal,
    ) -> Result<Option<Known>, StoreError> {
        match &principal.forwarded {
            Some(known) => Ok(Some(known.clone())),
            None => self.get(store, &principal.subject).await,
        }
    }

    /// The user `id`, from memory if read within the interval; `None` if there is none, or the
    /// account is locked (its API tokens are then refused like unknown ones).
    pub async fn get(&self, store: &Store, id: &str) -> Result<Option<Known>, StoreError> {
        if let Some(known) = self.0.get(id) {
            return Ok(Some(known));
        }
        let Some(user) = store.user(id).await?.filter(|u| u.locked_at.is_none()) else {
            return Ok(None);
        };
        let known = Known {
            username: user.username.as_str().to_owned(),
            roles: user.roles,
        };
        self.0.put(id, &known);
        Ok(Some(known))
    }
}
