//! The data directory: node key, config, API token and address, and the store.
//!
//! ```text
//! DIR/node.key       ed25519 secret seed, 64 hex characters (mode 0600; refused if others can read it)
//! DIR/gpumesh.toml   configuration (commented defaults written by `gpumesh init`)
//! DIR/api.token      bearer token for the local API, rewritten at each start (mode 0600)
//! DIR/api.json       {"api": "127.0.0.1:PORT", "pid": N, "peer_id": "12D3KooW…"} of the running node
//! DIR/db/            the sled store (offer book, leases, receipts)
//! ```

use crate::clock::random_bytes;
use gpumesh_protocol::{NodeId, SigningKey};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Problems with the data directory and its files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; pass --force to replace the node key (the node gets a new identity)")]
    AlreadyInitialised { path: PathBuf },
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not a gpumesh key: expected 64 hex characters (an ed25519 seed)")]
    BadKey { path: PathBuf },
    #[error("no node key in {dir}; run `gpumesh init` (or start `gpumesh node`, which initialises it)")]
    NotInitialised { dir: PathBuf },
    #[error("{path} is corrupt ({message}); remove it and restart the node")]
    BadApiFile { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_path_buf(), source }
}

/// What a running node records about its API, for the CLI to find it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiInfo {
    pub api: SocketAddr,
    pub pid: u32,
    pub peer_id: String,
}

/// Paths and files of one node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A data directory at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The platform's default (`$XDG_DATA_HOME/gpumesh`, `~/.local/share/gpumesh`).
    pub fn default_root() -> PathBuf {
        dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("gpumesh")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("gpumesh.toml")
    }
    pub fn token_path(&self) -> PathBuf {
        self.root.join("api.token")
    }
    pub fn api_path(&self) -> PathBuf {
        self.root.join("api.json")
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("db")
    }

    /// Whether a node key exists.
    pub fn is_initialised(&self) -> bool {
        self.key_path().exists()
    }

    /// Creates the directory (mode 0700), a fresh node key and a commented config. Refuses to
    /// replace an existing key unless `force`. Returns the new node id.
    pub fn init(&self, network: &str, force: bool) -> Result<NodeId, DataDirError> {
        let key_path = self.key_path();
        if key_path.exists() && !force {
            return Err(DataDirError::AlreadyInitialised { path: key_path });
        }
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(io_err(&self.root))?;
        let seed: [u8; 32] = random_bytes().map_err(io_err(&key_path))?;
        write_private(&key_path, format!("{}\n", hex::encode(seed)).as_bytes())?;
        let config = self.config_path();
        if force || !config.exists() {
            fs::write(&config, crate::config::default_config_text(network)).map_err(io_err(&config))?;
        }
        let key = SigningKey::from_bytes(&seed);
        Ok(NodeId::from_bytes(key.verifying_key().to_bytes()))
    }

    /// Reads the node key, refusing a key file that group or others can read.
    pub fn load_key(&self) -> Result<SigningKey, DataDirError> {
        let path = self.key_path();
        if !path.exists() {
            return Err(DataDirError::NotInitialised { dir: self.root.clone() });
        }
        check_private(&path)?;
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| DataDirError::BadKey { path: path.clone() })?;
        Ok(SigningKey::from_bytes(&seed))
    }

    /// Writes a fresh API token (mode 0600) and returns it.
    pub fn new_token(&self) -> Result<String, DataDirError> {
        let path = self.token_path();
        let token = hex::encode(random_bytes::<32>().map_err(io_err(&path))?);
        write_private(&path, format!("{token}\n").as_bytes())?;
        Ok(token)
    }

    /// Reads the API token, refusing one that others can read.
    pub fn read_token(&self) -> Result<String, DataDirError> {
        let path = self.token_path();
        check_private(&path)?;
        Ok(fs::read_to_string(&path).map_err(io_err(&path))?.trim().to_string())
    }

    /// Records the bound API address of the running node.
    pub fn write_api_info(&self, info: &ApiInfo) -> Result<(), DataDirError> {
        let path = self.api_path();
        let tmp = self.root.join("api.json.tmp");
        let text = serde_json::to_string_pretty(info)
            .map_err(|e| DataDirError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Reads what the running node recorded about its API.
    pub fn read_api_info(&self) -> Result<ApiInfo, DataDirError> {
        let path = self.api_path();
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text).map_err(|e| DataDirError::BadApiFile { path, message: e.to_string() })
    }

    /// Removes the API file (at clean shutdown).
    pub fn remove_api_info(&self) {
        let _ = fs::remove_file(self.api_path());
    }
}

/// Writes a file only its owner can read (0600), replacing it atomically.
fn write_private(path: &Path, data: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Refuses a file that group or others may read or write.
fn check_private(path: &Path) -> Result<(), DataDirError> {
    let mode = fs::metadata(path).map_err(io_err(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::TooOpen { path: path.to_path_buf(), mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_a_private_key_and_refuses_twice() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path().join("n"));
        let id = d.init("testnet", false).unwrap();
        let key = d.load_key().unwrap();
        assert_eq!(NodeId::from_bytes(key.verifying_key().to_bytes()), id);
        let mode = fs::metadata(d.key_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(d.init("testnet", false), Err(DataDirError::AlreadyInitialised { .. })));
        let id2 = d.init("testnet", true).unwrap();
        assert_ne!(id, id2);
        assert!(fs::read_to_string(d.config_path()).unwrap().contains("network = \"testnet\""));
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        d.init("x", false).unwrap();
        fs::set_permissions(d.key_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = d.load_key().unwrap_err();
        assert!(matches!(err, DataDirError::TooOpen { mode: 0o644, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn a_corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        d.init("x", false).unwrap();
        write_private(&d.key_path(), b"not hex").unwrap();
        assert!(matches!(d.load_key(), Err(DataDirError::BadKey { .. })));
        let empty = DataDir::new(dir.path().join("empty"));
        assert!(matches!(empty.load_key(), Err(DataDirError::NotInitialised { .. })));
    }

    #[test]
    fn token_round_trips_privately() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        let t = d.new_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(d.read_token().unwrap(), t);
    }
}
