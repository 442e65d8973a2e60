//! Loading the key set at start (generating the first key when there is none) and using it.

use std::path::PathBuf;

use josekit::jwk::Jwk;
use josekit::jws::{JwsHeader, JwsSigner, JwsVerifier};
use josekit::jwt::{self, JwtPayload};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::KeyState;
use super::files::{KeyFile, key_path};
use super::material::{generate, public_jwk, thumbprint};
use super::vault::Vault;
use crate::audit::{self, AuditEvent};
use crate::domain::SigningAlgorithm;
use crate::store::{KeyRecord, Store, StoreError};

/// Why the key set could not be loaded or used. Each message is one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key directory cannot be created, read or written.
    #[error("keys_dir {} is not usable: {}", .0.display(), .1)]
    Dir(PathBuf, String),
    /// A key file cannot be read or parsed.
    #[error("signing key file {} is not usable: {}", .0.display(), .1)]
    File(PathBuf, String),
    /// A key the server needs has no private half on disk.
    #[error(
        "signing key {kid} is {state} but its private key file {} is missing: restore keys_dir from backup (with several instances, every instance needs the same keys_dir)",
        path.display()
    )]
    MissingPrivate {
        /// The key.
        kid: String,
        /// Its state.
        state: &'static str,
        /// Where the file was expected.
        path: PathBuf,
    },
    /// `keys_passphrase` cannot be used: wrong for this database, or unusable.
    #[error("keys_passphrase: {0}")]
    Passphrase(String),
    /// Key material that does not parse or does not match its `kid`.
    #[error("signing key {0}: {1}")]
    Invalid(String, String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key ready for use: its record, published form, verifier and (when held) signer.
#[derive(Debug)]
pub struct LoadedKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The public JWK as published in the JWK set.
    pub public: Map<String, Value>,
    signer: Option<Box<dyn JwsSigner>>,
    verifier: Box<dyn JwsVerifier>,
}

impl LoadedKey {
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.record.kid
    }

    /// The verifier for tokens this key signed.
    pub fn verifier(&self) -> &dyn JwsVerifier {
        self.verifier.as_ref()
    }
}

/// The keys in force: exactly one current (signing) key, plus any next and previous keys.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<LoadedKey>,
    current: usize,
}

pub(super) fn invalid(kid: &str, err: impl std::fmt::Display) -> KeyError {
    KeyError::Invalid(kid.to_owned(), err.to_string())
}

fn signer_for(alg: SigningAlgorithm, jwk: &Jwk) -> Result<Box<dyn JwsSigner>, josekit::JoseError> {
    Ok(match alg {
        SigningAlgorithm::ES256 => Box::new(super::es256::Es256Signer::from_jwk(jwk)?),
        SigningAlgorithm::EdDSA => Box::new(josekit::jws::EdDSA.signer_from_jwk(jwk)?),
        SigningAlgorithm::RS256 => Box::new(josekit::jws::RS256.signer_from_jwk(jwk)?),
    })
}

fn verifier_for(
    alg: SigningAlgorithm,
    jwk: &Jwk,
) -> Result<Box<dyn JwsVerifier>, josekit::JoseError> {
    Ok(match alg {
        SigningAlgorithm::ES256 => Box::new(josekit::jws::ES256.verifier_from_jwk(jwk)?),
        SigningAlgorithm::EdDSA => Box::new(josekit::jws::EdDSA.verifier_from_jwk(jwk)?),
        SigningAlgorithm::RS256 => Box::new(josekit::jws::RS256.verifier_from_jwk(jwk)?),
    })
}

impl LoadedKey {
    fn load(vault: &Vault, record: KeyRecord) -> Result<Self, KeyError> {
        let public: Map<String, Value> =
            serde_json::from_str(&record.public_jwk).map_err(|e| invalid(&record.kid, e))?;
        let public_key = Jwk::from_map(public.clone()).map_err(|e| invalid(&record.kid, e))?;
        let verifier =
            verifier_for(record.alg, &public_key).map_err(|e| invalid(&record.kid, e))?;
        // Only a key that signs now, or will sign next, needs its private half.
        let needs_private = matches!(record.state, KeyState::Current | KeyState::Next);
        let signer = if needs_private {
            let jwk = vault
                .load_private(&record)?
                .ok_or_else(|| KeyError::MissingPrivate {
                    kid: record.kid.clone(),
                    state: record.state.as_str(),
                    path: key_path(vault.dir(), &record.kid),
                })?;
            Some(signer_for(record.alg, &jwk).map_err(|e| invalid(&record.kid, e))?)
        } else {
            None
        };
        Ok(Self {
            record,
            public,
            signer,
            verifier,
        })
    }
}

impl KeySet {
    /// The key that signs new tokens.
    pub fn current(&self) -> &LoadedKey {
        &self.keys[self.current]
    }

    /// All published keys (next, current, previous).
    pub fn keys(&self) -> &[LoadedKey] {
        &self.keys
    }

    /// The published key with this `kid`.
    pub fn key(&self, kid: &str) -> Option<&LoadedKey> {
        self.keys.iter().find(|k| k.kid() == kid)
    }

    /// The JWK set document (RFC 7517 §5): public keys only, the current key first.
    pub fn jwks(&self) -> Value {
        let current = std::iter::once(self.current());
        let others = self
            .keys
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.current)
            .map(|(_, k)| k);
        let keys: Vec<Value> = current
            .chain(others)
            .map(|k| Value::Object(k.public.clone()))
            .collect();
        json!({ "keys": keys })
    }

    /// Signs a JWT with the current key; the header carries `typ` and the key's `kid`.
    pub fn sign_jwt(&self, typ: &str, payload: &JwtPayload) -> Result<String, KeyError> {
        let key = self.current();
        let signer = key
            .signer
            .as_deref()
            .ok_or_else(|| invalid(key.kid(), "no private key loaded"))?;
        let mut header = JwsHeader::new();
        header.set_token_type(typ);
        header.set_key_id(key.kid());
        jwt::encode_with_signer(payload, &header, signer).map_err(|e| invalid(key.kid(), e))
    }
}

impl KeySet {
    /// Builds the set from every stored key. Withdrawn keys' private halves are destroyed here,
    /// where every instance (each with its own `keys_dir`, perhaps) sees the retirement.
    fn from_records(vault: &Vault, records: Vec<KeyRecord>) -> Result<Self, KeyError> {
        for retired in records.iter().filter(|r| !r.state.is_published()) {
            vault.delete_private(&retired.kid);
        }
        let mut keys = Vec::new();
        for record in records.into_iter().filter(|r| r.state.is_published()) {
            keys.push(LoadedKey::load(vault, record)?);
        }
        let current = keys
            .iter()
            .position(|k| k.record.state == KeyState::Current)
            .ok_or_else(|| invalid("-", "no current signing key"))?;
        Ok(Self { keys, current })
    }

    /// True when `records` (every stored key) publish exactly the keys of this set, in the
    /// same states: then there is nothing to reload.
    fn matches(&self, records: &[KeyRecord]) -> bool {
        let published: Vec<&KeyRecord> =
            records.iter().filter(|r| r.state.is_published()).collect();
        published.len() == self.keys.len()
            && published
                .iter()
                .zip(&self.keys)
                .all(|(r, k)| r.kid == k.record.kid && r.state == k.record.state)
    }
}

/// Loads the key set from the database and the vault. On first start (no current key) it
/// imports the newest key file left from an earlier database, or generates a key of `alg`;
/// either is written to the audit log.
pub async fn load_or_create(
    store: &Store,
    vault: &Vault,
    alg: SigningAlgorithm,
    now: OffsetDateTime,
) -> Result<KeySet, KeyError> {
    let mut records = store.signing_keys().await?;
    if !records.iter().any(|r| r.state == KeyState::Current) {
        create_current(store, vault, alg, now, records.is_empty()).await?;
        records = store.signing_keys().await?;
    }
    KeySet::from_records(vault, records)
}

/// The stored record of a key whose private half is `private`; no lifecycle times set.
fn key_record(
    kid: &str,
    alg: SigningAlgorithm,
    private: &Jwk,
    created_at: OffsetDateTime,
    private_sealed: Option<String>,
    state: KeyState,
) -> Result<KeyRecord, KeyError> {
    let public = public_jwk(private, kid, alg).ok_or_else(|| invalid(kid, "public key"))?;
    Ok(KeyRecord {
        kid: kid.to_owned(),
        alg,
        state,
        public_jwk: Value::Object(public).to_string(),
        created_at,
        activated_at: None,
        retire_after: None,
        retired_at: None,
        activate_after: None,
        private_sealed,
    })
}

/// Generates a key of `alg`, keeps its private half in the vault, and returns its record in
/// `state` (not yet inserted; lifecycle times are the caller's to set).
pub(super) fn new_key_record(
    vault: &Vault,
    alg: SigningAlgorithm,
    state: KeyState,
    now: OffsetDateTime,
) -> Result<KeyRecord, KeyError> {
    let private = generate(alg).map_err(|e| invalid("(new)", e))?;
    let kid = thumbprint(&private).ok_or_else(|| invalid("(new)", "no thumbprint"))?;
    let sealed = vault.store_private(&kid, alg.as_str(), now, &private)?;
    key_record(&kid, alg, &private, now, sealed, state)
}

async fn create_current(
    store: &Store,
    vault: &Vault,
    alg: SigningAlgorithm,
    now: OffsetDateTime,
    database_is_empty: bool,
) -> Result<(), KeyError> {
    // A key directory that outlived its database: keep using its newest key, so tokens and
    // JWK-set caches elsewhere stay valid.
    let imported = if database_is_empty {
        KeyFile::read_all(vault.dir())?
            .into_iter()
            .filter(|f| SigningAlgorithm::parse(&f.alg).is_some())
            .max_by_key(|f| f.created_at)
    } else {
        None
    };
    let (mut record, kind) = match imported {
        Some(file) => {
            let alg = SigningAlgorithm::parse(&file.alg)
                .ok_or_else(|| invalid(&file.kid, "algorithm"))?;
            let private = vault.file_private(&file)?;
            let created = OffsetDateTime::from_unix_timestamp(file.created_at).unwrap_or(now);
            let sealed = file.sealed_private_jwk.clone();
            let record = key_record(&file.kid, alg, &private, created, sealed, KeyState::Current)?;
            (record, "key.imported")
        }
        None => (
            new_key_record(vault, alg, KeyState::Current, now)?,
            "key.generated",
        ),
    };
    record.activated_at = Some(now);
    match store.insert_signing_key(&record).await {
        Ok(()) => {}
        // Another instance sharing the database won the race: its key is current; ours stays
        // an unused file.
        Err(StoreError::Conflict(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(kid = %record.kid, alg = %alg, dir = %vault.dir().display(), "{kind}: new current signing key");
    audit::record(
        store,
        AuditEvent::new(
            kind,
            now,
            json!({ "kid": record.kid, "alg": alg.as_str(), "state": "current" }),
        ),
    )
    .await?;
    Ok(())
}

/// The key set shared by the authorization and resource halves; replaced whole when keys change,
/// so a reader always sees one consistent set.
#[derive(Debug)]
pub struct KeyStore {
    set: std::sync::RwLock<std::sync::Arc<KeySet>>,
    vault: Vault,
    /// When a reload for an unknown `kid` was last tried (at most one a second).
    last_on_demand: std::sync::Mutex<Option<std::time::Instant>>,
}

impl KeyStore {
    /// Wraps a loaded set and the vault its private keys come from.
    pub fn new(set: KeySet, vault: Vault) -> Self {
        Self {
            set: std::sync::RwLock::new(std::sync::Arc::new(set)),
            vault,
            last_on_demand: std::sync::Mutex::new(None),
        }
    }

    /// The set in force now.
    pub fn snapshot(&self) -> std::sync::Arc<KeySet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The vault of private keys.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Installs a new set.
    pub fn replace(&self, set: KeySet) {
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(set);
    }

    /// Re-reads the key states from the database (changes made by the CLI, another instance
    /// or the schedule) and installs the new set when anything changed. `true` when it did.
    /// On an error the set in force stays.
    pub async fn reload(&self, store: &Store) -> Result<bool, KeyError> {
        self.install(store.signing_keys().await?)
    }

    /// Installs the set that `records` (every stored key, just read) describe, unless it is the
    /// set in force. `true` when it changed.
    pub fn install(&self, records: Vec<KeyRecord>) -> Result<bool, KeyError> {
        if self.snapshot().matches(&records) {
            return Ok(false);
        }
        let set = KeySet::from_records(&self.vault, records)?;
        let kid = set.current().kid().to_owned();
        let published: Vec<String> = set
            .keys()
            .iter()
            .map(|k| format!("{}={}", k.kid(), k.record.state.as_str()))
            .collect();
        self.replace(set);
        tracing::info!(signing_key = %kid, published = ?published, "signing keys reloaded");
        Ok(true)
    }

    /// Verifies a JWT with the keys in force; one signed by a `kid` this instance does not know
    /// yet makes it re-read the keys (see [`Self::reload_for_unknown_kid`]) and try once more.
    pub async fn verify_jwt(
        &self,
        store: &Store,
        token: &str,
    ) -> Result<(JwtPayload, JwsHeader), JwtRejection> {
        match self.snapshot().verify_jwt(token) {
            Err(JwtRejection::UnknownKey) if self.reload_for_unknown_kid(store).await => {
                self.snapshot().verify_jwt(token)
            }
            other => other,
        }
    }

    /// A token named a `kid` this instance does not know: another instance may have activated
    /// a key a moment ago. Reloads at most once a second; `true` when the set changed.
    pub async fn reload_for_unknown_kid(&self, store: &Store) -> bool {
        {
            let mut last = self
                .last_on_demand
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
                return false;
            }
            *last = Some(now);
        }
        match self.reload(store).await {
            Ok(changed) => changed,
            Err(err) => {
                tracing::error!(error = %err, "cannot reload signing keys");
                false
            }
        }
    }
}

impl KeySet {
    /// Verifies a JWT's signature with the published key its `kid` names. The header's `alg`
    /// must be exactly that key's algorithm, so `none`, HMAC-with-the-public-key and algorithm
    /// confusion are refused; an unknown or retired `kid` is refused. Claims are not checked
    /// here: that is the caller's job (issuer, audience, expiry, type).
    pub fn verify_jwt(&self, token: &str) -> Result<(JwtPayload, JwsHeader), JwtRejection> {
        let unknown_kid = std::cell::Cell::new(false);
        jwt::decode_with_verifier_selector(token, |header| {
            let kid = header
                .key_id()
                .ok_or_else(|| josekit::JoseError::InvalidJwtFormat(anyhow_error("no kid")))?;
            let Some(key) = self.key(kid) else {
                unknown_kid.set(true);
                return Err(josekit::JoseError::InvalidJwtFormat(anyhow_error(
                    "unknown kid",
                )));
            };
            if header.algorithm() != Some(key.record.alg.as_str()) {
                return Err(josekit::JoseError::InvalidJwtFormat(anyhow_error(
                    "alg does not match the key",
                )));
            }
            Ok(Some(key.verifier()))
        })
        .map_err(|e| {
            if unknown_kid.get() {
                JwtRejection::UnknownKey
            } else {
                JwtRejection::Invalid(e.to_string())
            }
        })
    }
}

/// Why [`KeySet::verify_jwt`] refused a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtRejection {
    /// Its `kid` names no key of this set: unknown here, or retired.
    UnknownKey,
    /// Malformed, wrong algorithm, or a signature that does not verify.
    Invalid(String),
}

fn anyhow_error(message: &'static str) -> anyhow::Error {
    anyhow::anyhow!(message)
}
