//! Where the private halves of signing keys are kept: one file per key in `keys_dir`, and, when
//! a `keys_passphrase` is configured, sealed (AES-256-GCM) both in that file and in the
//! database row, so every instance sharing the database can load a key another instance made.
//!
//! The key-encryption key is derived once per process with argon2id from the passphrase and a
//! random salt kept in the database (`server_secrets.keys_kdf_salt`); each sealed key is bound
//! to its `kid`, so a sealed blob moved to another row does not open.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use josekit::jwk::Jwk;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::KeyError;
use super::files::{KeyFile, prepare_dir};
use super::keyset::invalid;
use super::material::thumbprint;
use super::sealed;
use crate::store::{KeyRecord, Store};

/// The key-encryption key. `Debug` never shows it.
struct Kek([u8; 32]);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// The private-key store of one instance.
#[derive(Debug, Clone)]
pub struct Vault {
    dir: PathBuf,
    kek: Option<Arc<Kek>>,
}

/// A private JWK that must be the key `kid` names (its RFC 7638 thumbprint).
fn checked(kid: &str, private: Map<String, Value>) -> Result<Jwk, KeyError> {
    let jwk = Jwk::from_map(private).map_err(|e| invalid(kid, e))?;
    if thumbprint(&jwk).as_deref() != Some(kid) {
        return Err(invalid(kid, "the private key does not match its kid"));
    }
    Ok(jwk)
}

/// Where the sealed check value is kept (`server_secrets`).
const PASSPHRASE_CHECK_NAME: &str = "keys_passphrase_check";

/// What the passphrase check seals (and binds the seal to).
const PASSPHRASE_CHECK: &[u8] = b"gatehouse keys_passphrase check v1";

impl Vault {
    /// Prepares `dir` and, with a passphrase, derives the key-encryption key (argon2id, off the
    /// async runtime: it is deliberately slow).
    pub async fn open(
        store: &Store,
        dir: &Path,
        passphrase: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Self, KeyError> {
        prepare_dir(dir)?;
        let kek = match passphrase {
            None => None,
            Some(passphrase) => {
                let fresh = crate::domain::random_token(16)
                    .map_err(|_| KeyError::Passphrase("random number generator failed".into()))?;
                let salt = store.server_secret("keys_kdf_salt", || fresh, now).await?;
                let passphrase = passphrase.as_bytes().to_vec();
                let derived = tokio::task::spawn_blocking(move || {
                    let mut out = [0u8; 32];
                    argon2::Argon2::default()
                        .hash_password_into(&passphrase, salt.as_bytes(), &mut out)
                        .map(|()| out)
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| KeyError::Passphrase(e.to_string()))?
                .map_err(KeyError::Passphrase)?;
                let kek = Kek(derived);
                let wrong = || {
                    KeyError::Passphrase(
                        "it is not the passphrase this database's signing keys are sealed with"
                            .into(),
                    )
                };
                // A mistyped passphrase must stop start-up (or the CLI) before it seals a key no
                // other instance could open: it must open a known text the first instance with a
                // passphrase sealed. That first instance checked it against a key already sealed,
                // if any; later ones need not read the keys for it.
                let stored = match store.existing_server_secret(PASSPHRASE_CHECK_NAME).await? {
                    Some(stored) => stored,
                    None => {
                        let records = store.signing_keys().await?;
                        if let Some(key) = records.iter().find(|r| r.private_sealed.is_some()) {
                            let blob = key.private_sealed.as_deref().unwrap_or_default();
                            if sealed::open(&kek.0, key.kid.as_bytes(), blob).is_none() {
                                return Err(wrong());
                            }
                        }
                        let check = sealed::seal(&kek.0, PASSPHRASE_CHECK, PASSPHRASE_CHECK)
                            .ok_or_else(|| {
                                KeyError::Passphrase("cannot seal the check value".into())
                            })?;
                        store
                            .server_secret(PASSPHRASE_CHECK_NAME, || check, now)
                            .await?
                    }
                };
                if sealed::open(&kek.0, PASSPHRASE_CHECK, &stored).as_deref()
                    != Some(PASSPHRASE_CHECK)
                {
                    return Err(wrong());
                }
                Some(Arc::new(kek))
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            kek,
        })
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `clear` sealed under the passphrase's key and bound to `name`; `None` when no passphrase
    /// is set.
    pub fn seal_secret(&self, name: &str, clear: &[u8]) -> Option<String> {
        let kek = self.kek.as_ref()?;
        sealed::seal(&kek.0, name.as_bytes(), clear)
    }

    /// What [`Vault::seal_secret`] sealed as `name`.
    pub fn open_secret(&self, name: &str, blob: &str) -> Result<Vec<u8>, KeyError> {
        let Some(kek) = &self.kek else {
            return Err(KeyError::Passphrase(format!(
                "{name} is sealed under a passphrase: set GATEHOUSE_KEYS_PASSPHRASE"
            )));
        };
        sealed::open(&kek.0, name.as_bytes(), blob).ok_or_else(|| {
            KeyError::Passphrase(format!(
                "cannot open {name}: keys_passphrase is not the one it was sealed with"
            ))
        })
    }

    fn seal(&self, kid: &str, private: &Map<String, Value>) -> Result<Option<String>, KeyError> {
        let Some(kek) = &self.kek else {
            return Ok(None);
        };
        let clear = serde_json::to_vec(private).map_err(|e| invalid(kid, e))?;
        sealed::seal(&kek.0, kid.as_bytes(), &clear)
            .map(Some)
            .ok_or_else(|| invalid(kid, "cannot seal the private key"))
    }

    fn open_sealed(&self, kid: &str, blob: &str) -> Result<Map<String, Value>, KeyError> {
        let Some(kek) = &self.kek else {
            return Err(invalid(
                kid,
                "the private key is sealed under a passphrase: set GATEHOUSE_KEYS_PASSPHRASE",
            ));
        };
        let clear = sealed::open(&kek.0, kid.as_bytes(), blob).ok_or_else(|| {
            invalid(
                kid,
                "cannot decrypt the private key: keys_passphrase is not the one it was sealed with",
            )
        })?;
        serde_json::from_slice(&clear).map_err(|e| invalid(kid, e))
    }

    /// Writes a new private key to `keys_dir` (sealed when a passphrase is set) and returns
    /// what the database row keeps: the sealed form, or nothing.
    pub fn store_private(
        &self,
        kid: &str,
        alg: &str,
        created_at: OffsetDateTime,
        private: &Jwk,
    ) -> Result<Option<String>, KeyError> {
        let sealed = self.seal(kid, private.as_ref())?;
        let file = KeyFile {
            kid: kid.to_owned(),
            alg: alg.to_owned(),
            created_at: created_at.unix_timestamp(),
            private_jwk: if sealed.is_some() {
                None
            } else {
                Some(private.as_ref().clone())
            },
            sealed_private_jwk: sealed.clone(),
        };
        file.write(&self.dir)?;
        Ok(sealed)
    }

    /// The private half of a file's key, opening it when sealed.
    pub fn file_private(&self, file: &KeyFile) -> Result<Jwk, KeyError> {
        let map = match (&file.private_jwk, &file.sealed_private_jwk) {
            (Some(map), _) => map.clone(),
            (None, Some(blob)) => self.open_sealed(&file.kid, blob)?,
            (None, None) => return Err(invalid(&file.kid, "the key file holds no private key")),
        };
        checked(&file.kid, map)
    }

    /// The private half of a stored key: from `keys_dir`, else from the database row's sealed
    /// copy. `None` when neither holds it.
    pub fn load_private(&self, record: &KeyRecord) -> Result<Option<Jwk>, KeyError> {
        if let Some(file) = KeyFile::read(&self.dir, &record.kid)? {
            return self.file_private(&file).map(Some);
        }
        let Some(blob) = &record.private_sealed else {
            return Ok(None);
        };
        checked(&record.kid, self.open_sealed(&record.kid, blob)?).map(Some)
    }

    /// Destroys a key's private file (a retired key never signs or verifies again).
    pub fn delete_private(&self, kid: &str) {
        let path = super::files::key_path(&self.dir, kid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a retired key's private file");
            }
        }
    }
}
