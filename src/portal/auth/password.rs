//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes, 1 lane,
//! OWASP's recommended minimum), stored as PHC strings so the parameters travel with the hash.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Shortest password accepted.
pub const MIN_LEN: usize = 12;

/// A password that cannot be used or hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// Too short.
    #[error("the password must have at least {MIN_LEN} characters")]
    TooShort,
    /// Longer than anyone types; refused so hashing cannot be used to burn CPU.
    #[error("the password must have at most 256 characters")]
    TooLong,
    /// The hashing library failed.
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// Checks the policy: 12–256 characters, not only whitespace.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    let n = password.chars().count();
    if n > 256 {
        return Err(PasswordError::TooLong);
    }
    if n < MIN_LEN || password.trim().is_empty() {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

/// Hashes `password` (after [`check_policy`]) into a PHC string with a fresh salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    check_policy(password)?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// A hash of a password nobody has, verified when the user does not exist so that the answer
/// takes as long as for a real user.
fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Whether `password` matches `stored` (a PHC string); `None` verifies against a decoy and
/// answers false, in the same time.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    if password.len() > 1024 {
        return false;
    }
    let (phc, real) = match stored {
        Some(s) => (s, true),
        None => (decoy(), false),
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && real
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify("correct horse battery", Some(&a)));
        assert!(!verify("correct horse batterY", Some(&a)));
        assert!(!verify("correct horse battery", None));
        assert!(!verify("x", Some("not a phc string")));
    }

    #[test]
    fn policy_refuses_short_and_blank_passwords() {
        assert!(matches!(hash("short"), Err(PasswordError::TooShort)));
        assert!(matches!(hash("            "), Err(PasswordError::TooShort)));
        assert!(matches!(
            hash(&"x".repeat(300)),
            Err(PasswordError::TooLong)
        ));
    }
}
