//! The private halves of signing keys, one JSON file per key in `keys_dir` (mode 0600, the
//! directory 0700). The directory also holds a README and a `.gitignore` so a key is never
//! committed by accident.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::KeyError;

const GITIGNORE: &str = "# Private signing keys: never commit them.\n*\n!.gitignore\n!README.md\n";
const README: &str = "# Gatehouse signing keys\n\n\
This directory holds the private halves of Gatehouse's token-signing keys, one `<kid>.json` file\n\
per key (mode 0600). Gatehouse generates the first key on its first start; `gatehouse keys list`\n\
shows every key and its state. Back this directory up with the database, keep it private, and\n\
never commit it: the `.gitignore` here ignores everything but itself and this README.\n";

/// The on-disk form of one private key.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// RFC 7638 thumbprint; also the file name.
    pub kid: String,
    /// Algorithm the key signs with.
    pub alg: String,
    /// Unix seconds of generation.
    pub created_at: i64,
    /// The private JWK (both halves), when no passphrase is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_jwk: Option<Map<String, Value>>,
    /// The private JWK sealed under `keys_passphrase` (see `vault`), when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_private_jwk: Option<String>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private_jwk", &"<redacted>")
            .field("sealed", &self.sealed_private_jwk.is_some())
            .finish()
    }
}

fn dir_error(dir: &Path, err: impl std::fmt::Display) -> KeyError {
    KeyError::Dir(dir.to_owned(), err.to_string())
}

/// Creates `dir` (0700) if needed, checks it can be read and written, and writes its README and
/// `.gitignore` when missing.
pub fn prepare_dir(dir: &Path) -> Result<(), KeyError> {
    if dir.exists() && !dir.is_dir() {
        return Err(dir_error(dir, "exists but is not a directory"));
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| dir_error(dir, e))?;
    // An existing directory others may read or enter is theirs to list: made the owner's alone.
    let mode = fs::metadata(dir)
        .map_err(|e| dir_error(dir, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| dir_error(dir, e))?;
        tracing::warn!(dir = %dir.display(), "the keys directory was open to other users; it is now mode 0700");
    }
    fs::read_dir(dir).map_err(|e| dir_error(dir, e))?;
    for (name, text) in [(".gitignore", GITIGNORE), ("README.md", README)] {
        let path = dir.join(name);
        if !path.exists() {
            fs::write(&path, text).map_err(|e| dir_error(dir, e))?;
        }
    }
    Ok(())
}

/// The path of a key's file.
pub fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.json"))
}

impl KeyFile {
    /// Writes the file atomically with mode 0600: a temporary file created 0600, synced, then
    /// renamed into place, so a crash never leaves a half-written key.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, KeyError> {
        let path = key_path(dir, &self.kid);
        let tmp = dir.join(format!(".{}.json.tmp", self.kid));
        let json = serde_json::to_vec_pretty(self).map_err(|e| dir_error(dir, e))?;
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| dir_error(dir, e))?;
        file.write_all(&json).map_err(|e| dir_error(dir, e))?;
        file.sync_all().map_err(|e| dir_error(dir, e))?;
        fs::rename(&tmp, &path).map_err(|e| dir_error(dir, e))?;
        // The rename is durable only once the directory itself is synced: without this, a crash
        // could leave a database that names a key whose file never reached the disk.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| dir_error(dir, e))?;
        Ok(path)
    }

    /// Reads the file of `kid`, if there is one. Warns when the file is readable by others.
    pub fn read(dir: &Path, kid: &str) -> Result<Option<Self>, KeyError> {
        let path = key_path(dir, kid);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeyError::File(path, e.to_string())),
        };
        if let Ok(meta) = fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "private signing key is readable by other users: chmod 600 it"
                );
            }
        }
        let file: Self = serde_json::from_slice(&bytes)
            .map_err(|e| KeyError::File(path.clone(), e.to_string()))?;
        if file.kid != kid {
            return Err(KeyError::File(path, format!("holds kid {:?}", file.kid)));
        }
        Ok(Some(file))
    }

    /// Every key file in `dir`, in no particular order.
    pub fn read_all(dir: &Path) -> Result<Vec<Self>, KeyError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| dir_error(dir, e))? {
            let entry = entry.map_err(|e| dir_error(dir, e))?;
            let name = entry.file_name();
            let Some(kid) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if kid.starts_with('.') {
                continue;
            }
            if let Some(file) = Self::read(dir, kid)? {
                out.push(file);
            }
        }
        Ok(out)
    }
}
