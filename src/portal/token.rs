//! Random secrets in files only the service user can read (the internal API's bearer token, the
//! portal's session key), created at first start, compared in constant time.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Shortest token accepted from a file (hex characters).
const MIN_LEN: usize = 32;

/// The token file could not be read or created, or holds too short a token.
#[derive(Debug, thiserror::Error)]
#[error("secret file {path}: {reason}")]
pub struct TokenError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads the token from `path`, creating the file (mode 0600) with a fresh random token when
/// it does not exist.
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    let err = |reason: String| TokenError {
        path: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        writeln!(f, "{token}").map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
    }
    read(path)
}

/// Reads a token file (a worker's `--token-file`).
pub fn read(path: &Path) -> Result<String, TokenError> {
    let err = |reason: String| TokenError {
        path: path.display().to_string(),
        reason,
    };
    let token = std::fs::read_to_string(path)
        .map_err(|e| err(e.to_string()))?
        .trim()
        .to_owned();
    if token.len() < MIN_LEN || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(err(format!(
            "the token must be at least {MIN_LEN} printable characters"
        )));
    }
    Ok(token)
}

/// Whether `given` equals `expected`, in time independent of where they differ.
pub fn matches(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_compared() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let t = load_or_create(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(load_or_create(&path).unwrap(), t, "kept, not regenerated");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches(&t, &t));
        assert!(!matches(&t[1..], &t));
        std::fs::write(&path, "short").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("at least 32"));
    }
}
