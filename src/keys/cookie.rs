//! The session-cookie signing key: 64 random bytes that, with a session id, make a valid browser
//! session cookie. Kept as the private halves of the signing keys are, never in the database in
//! clear: sealed in the database under `keys_passphrase` when one is set (every instance sharing
//! the database shares it), else in a 0600 file in `keys_dir` (which every instance must then
//! share, as for the signing keys). A key an older version kept in clear in the database is
//! moved to its new place, so browsers signed in stay signed in.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use super::{KeyError, Vault};
use crate::store::Store;

/// Where older versions kept it, in clear (`server_secrets`).
const IN_CLEAR: &str = "session_cookie_key";
/// The sealed copy's name in `server_secrets`, also what the seal is bound to.
const SEALED: &str = "session_cookie_key_sealed";
/// The file's name in `keys_dir`.
const FILE: &str = "session_cookie_key";

/// The key (64 bytes), created on the very first start of any instance.
pub async fn session_cookie_key(
    store: &Store,
    vault: &Vault,
    now: OffsetDateTime,
) -> Result<Vec<u8>, KeyError> {
    let in_clear = store.existing_server_secret(IN_CLEAR).await?;
    let candidate = match &in_clear {
        Some(old) => old.clone(),
        None => crate::domain::random_token(64)
            .map_err(|_| KeyError::Passphrase("random number generator failed".into()))?,
    };
    let encoded = match vault.seal_secret(SEALED, candidate.as_bytes()) {
        Some(sealed) => {
            // Another instance may have stored one first: theirs stands.
            let sealed = store.server_secret(SEALED, || sealed, now).await?;
            let clear = vault.open_secret(SEALED, &sealed)?;
            String::from_utf8(clear).map_err(|e| invalid(e.to_string()))?
        }
        None => in_file(vault, &candidate)?,
    };
    if in_clear.is_some() {
        store.delete_server_secret(IN_CLEAR).await?;
        tracing::info!(
            "moved the session-cookie key out of the database, where it was kept in clear"
        );
    }
    let key = URL_SAFE_NO_PAD
        .decode(encoded.trim().as_bytes())
        .map_err(|e| invalid(e.to_string()))?;
    if key.len() < 64 {
        return Err(invalid(format!("{} bytes, not 64", key.len())));
    }
    Ok(key)
}

/// The key in `keys_dir`: the file's, or `candidate` written there (mode 0600) when there is
/// none yet.
fn in_file(vault: &Vault, candidate: &str) -> Result<String, KeyError> {
    let path = vault.dir().join(FILE);
    let failed = |e: std::io::Error| KeyError::File(path.clone(), e.to_string());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(candidate.as_bytes()).map_err(failed)?;
            file.sync_all().map_err(failed)?;
            Ok(candidate.to_owned())
        }
        // Another instance sharing keys_dir wrote it first, or an earlier start did.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(&path).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

fn invalid(why: String) -> KeyError {
    KeyError::Invalid(FILE.to_owned(), why)
}
