//! Login sessions: the cookie carries 32 random bytes (hex); the `sessions` table keeps only
//! their HMAC-SHA256 under the node's session key (`portal.session_key_file`), with the
//! session's CSRF token, its peer and its expiry. Sessions expire after [`IDLE`] without use and
//! after [`ABSOLUTE`] in any case; logout, a password change and disabling a user delete them.

use std::path::Path;

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::users::User;
use crate::db::schema::{sessions, users};
use crate::db::{Db, DbError};
use crate::portal::token::{self, TokenError};

/// A session unused this long ends.
pub const IDLE: chrono::Duration = chrono::Duration::hours(8);
/// No session lives longer than this.
pub const ABSOLUTE: chrono::Duration = chrono::Duration::hours(24);
/// `last_seen_at` is written at most this often (one write per request would make every page
/// view a database write).
const TOUCH_EVERY: chrono::Duration = chrono::Duration::minutes(1);

/// The session cookie's name.
pub const COOKIE: &str = "kneenode_session";

/// The key sessions are hashed with.
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(…)")
    }
}

impl SessionKey {
    /// Reads the key file, creating it (mode 0600) with a random key at first start.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        token::load_or_create(path).map(|k| Self(k.into_bytes()))
    }

    /// A key for tests and throwaway nodes.
    pub fn random() -> Self {
        Self(random_hex(32).into_bytes())
    }

    fn id_of(&self, cookie: &str) -> String {
        match <Hmac<Sha256> as Mac>::new_from_slice(&self.0) {
            Ok(mut mac) => {
                mac.update(cookie.as_bytes());
                hex(&mac.finalize().into_bytes())
            }
            // HMAC takes keys of any length; keep a keyed hash all the same.
            Err(_) => {
                use sha2::Digest;
                hex(&Sha256::new()
                    .chain_update(&self.0)
                    .chain_update(cookie.as_bytes())
                    .finalize())
            }
        }
    }
}

/// `n` random bytes from the OS, as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if getrandom::getrandom(&mut buf).is_err() {
        // The OS generator does not fail on Linux after boot; fall back to two v4 UUIDs (also
        // from the OS generator, through another path) rather than panic.
        let u = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        return u.chars().take(n * 2).collect();
    }
    hex(&buf)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A live session and its user.
#[derive(Debug, Clone)]
pub struct Session {
    /// The stored id (the cookie's HMAC).
    pub id: String,
    /// The CSRF token every form and API write must carry.
    pub csrf: String,
    /// The user.
    pub user: User,
}

/// A new session: the cookie value to set and the session.
#[derive(Debug, Clone)]
pub struct Created {
    /// The cookie value (the only copy of the raw token).
    pub cookie: String,
    /// The session.
    pub session: Session,
}

/// Opens a session for `user`, and removes expired ones.
pub fn create(db: &Db, key: &SessionKey, user: &User, peer: &str) -> Result<Created, DbError> {
    let cookie = random_hex(32);
    let csrf = random_hex(32);
    let id = key.id_of(&cookie);
    let now = Utc::now().naive_utc();
    let mut conn = db.conn()?;
    diesel::delete(sessions::table.filter(sessions::expires_at.lt(now))).execute(&mut *conn)?;
    diesel::insert_into(sessions::table)
        .values((
            sessions::id.eq(&id),
            sessions::user_id.eq(user.id),
            sessions::csrf_token.eq(&csrf),
            sessions::peer.eq(peer),
            sessions::created_at.eq(now),
            sessions::last_seen_at.eq(now),
            sessions::expires_at.eq(now + IDLE),
        ))
        .execute(&mut *conn)?;
    Ok(Created {
        cookie,
        session: Session {
            id,
            csrf,
            user: user.clone(),
        },
    })
}

/// The session behind a cookie value, when it exists, has not expired and its user is
/// enabled; extends its idle expiry.
pub fn lookup(db: &Db, key: &SessionKey, cookie: &str) -> Result<Option<Session>, DbError> {
    if cookie.len() != 64 || !cookie.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let id = key.id_of(cookie);
    let now = Utc::now().naive_utc();
    let mut conn = db.conn()?;
    let row: Option<(String, NaiveDateTime, NaiveDateTime, NaiveDateTime, User)> = sessions::table
        .inner_join(users::table)
        .filter(sessions::id.eq(&id))
        .select((
            sessions::csrf_token,
            sessions::created_at,
            sessions::last_seen_at,
            sessions::expires_at,
            User::as_select(),
        ))
        .first(&mut *conn)
        .optional()?;
    let Some((csrf, created, seen, expires, user)) = row else {
        return Ok(None);
    };
    if expires < now || created + ABSOLUTE < now || user.disabled {
        diesel::delete(sessions::table.find(&id)).execute(&mut *conn)?;
        return Ok(None);
    }
    if now - seen > TOUCH_EVERY {
        let until = (now + IDLE).min(created + ABSOLUTE);
        diesel::update(sessions::table.find(&id))
            .set((
                sessions::last_seen_at.eq(now),
                sessions::expires_at.eq(until),
            ))
            .execute(&mut *conn)?;
    }
    Ok(Some(Session { id, csrf, user }))
}

/// Ends a session.
pub fn delete(db: &Db, id: &str) -> Result<(), DbError> {
    let mut conn = db.conn()?;
    diesel::delete(sessions::table.find(id)).execute(&mut *conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_keyed_hashes_and_secrets_compare_exactly() {
        let a = SessionKey::random();
        let b = SessionKey::random();
        let cookie = random_hex(32);
        assert_eq!(cookie.len(), 64);
        assert_eq!(a.id_of(&cookie), a.id_of(&cookie));
        assert_ne!(
            a.id_of(&cookie),
            b.id_of(&cookie),
            "another key, another id"
        );
        assert_ne!(a.id_of(&cookie), cookie);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
