//! The `forwarded` credential of `/mcp`: a person named in headers by a reverse proxy that
//! authenticated them (`mcp.forwarded_user_header`, and their groups in
//! `mcp.forwarded_groups_header`), believed only from an address in `trusted_proxies`. Groups
//! are comma-separated, trimmed, empty ones dropped, compared case-sensitively, and give roles
//! through `mcp.forwarded_group_roles`; the roles give the scopes, as a user's do.

use axum::http::HeaderMap;

use super::users::Known;
use super::verify::{CallerKind, Principal, TokenVerifier};
use crate::config::Config;

/// The `client_id` of a forwarded caller.
pub const FORWARDED_CLIENT: &str = "forwarded";
/// Longest name accepted from the proxy.
const MAX_NAME: usize = 256;

/// Whether the request names a person in the forwarded-user header (trusted or not).
pub fn names_someone(config: &Config, headers: &HeaderMap) -> bool {
    headers.contains_key(config.mcp.forwarded_user_header.as_str())
}

/// The person a trusted proxy named, with the roles and scopes their groups give; `None` when
/// the name is missing, empty, too long or holds control characters.
pub fn principal(
    config: &Config,
    verifier: &TokenVerifier,
    headers: &HeaderMap,
    now: time::OffsetDateTime,
) -> Option<Principal> {
    let mcp = &config.mcp;
    let mut names = headers.get_all(mcp.forwarded_user_header.as_str()).iter();
    let name = names.next()?.to_str().ok()?.trim().to_owned();
    // Two names are no name.
    if names.next().is_some()
        || name.is_empty()
        || name.len() > MAX_NAME
        || name.chars().any(char::is_control)
    {
        return None;
    }
    let mut roles: Vec<String> = Vec::new();
    for value in headers.get_all(mcp.forwarded_groups_header.as_str()) {
        let Ok(list) = value.to_str() else { continue };
        for group in list.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if let Some(role) = mcp.forwarded_group_roles.get(group) {
                if !roles.contains(role) {
                    roles.push(role.clone());
                }
            }
        }
    }
    let scopes = config.grantable_by_roles(&roles).join(" ");
    let key = format!("fwd:{name}");
    Some(Principal {
        subject: key.clone(),
        kind: CallerKind::User,
        client_id: FORWARDED_CLIENT.to_owned(),
        scopes: verifier.effective_scopes(&scopes),
        grant_id: key,
        jti: String::new(),
        // Each request stands alone; this only bounds what is derived from it.
        expires_at: (now + time::Duration::hours(1)).unix_timestamp(),
        forwarded: Some(Known {
            username: name,
            roles,
        }),
    })
}
