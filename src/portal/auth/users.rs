//! Portal users in the `users` table: created and changed by `kneenode user …` (and by admins in
//! the portal), never with a default password. Disabling a user ends their sessions.

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::password::{self, PasswordError};
use crate::db::schema::{sessions, users};
use crate::db::{Db, DbError};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: configuration, users, delete, resend, audit.
    Admin,
    /// View, download and upload.
    Clinician,
}

impl Role {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Clinician => "clinician",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "clinician" => Some(Self::Clinician),
            _ => None,
        }
    }
}

/// A user row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `admin` or `clinician`.
    pub role: String,
    /// A disabled user cannot log in.
    pub disabled: bool,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Last successful login.
    pub last_login_at: Option<NaiveDateTime>,
}

impl User {
    /// The role; an unknown stored role counts as the least privileged.
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Clinician)
    }
}

/// A user change that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// The name is not acceptable.
    #[error("user name {0:?} is not valid: use 1–64 letters, digits, '.', '_', '-' or '@'")]
    BadName(String),
    /// The name is taken.
    #[error("user {0:?} already exists")]
    Exists(String),
    /// No such user.
    #[error("no user {0:?}")]
    NotFound(String),
    /// The password policy.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for UserError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

/// Whether `name` is an acceptable user name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Creates a user.
pub fn add(db: &Db, name: &str, role: Role, password: &str) -> Result<User, UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName(name.to_owned()));
    }
    let hash = password::hash(password)?;
    let mut conn = db.conn()?;
    let exists: i64 = users::table
        .filter(users::username.eq(name))
        .count()
        .get_result(&mut *conn)?;
    if exists > 0 {
        return Err(UserError::Exists(name.to_owned()));
    }
    diesel::insert_into(users::table)
        .values((
            users::username.eq(name),
            users::password_hash.eq(&hash),
            users::role.eq(role.as_str()),
            users::disabled.eq(false),
            users::created_at.eq(Utc::now().naive_utc()),
        ))
        .execute(&mut *conn)?;
    Ok(users::table
        .filter(users::username.eq(name))
        .select(User::as_select())
        .first(&mut *conn)?)
}

/// The user called `name`.
pub fn find(db: &Db, name: &str) -> Result<Option<User>, DbError> {
    let mut conn = db.conn()?;
    Ok(users::table
        .filter(users::username.eq(name))
        .select(User::as_select())
        .first(&mut *conn)
        .optional()?)
}

/// Every user, by name.
pub fn list(db: &Db) -> Result<Vec<User>, DbError> {
    let mut conn = db.conn()?;
    Ok(users::table
        .order(users::username.asc())
        .select(User::as_select())
        .load(&mut *conn)?)
}

/// How many enabled admins exist (the portal refuses to disable the last one).
pub fn enabled_admins(db: &Db) -> Result<i64, DbError> {
    let mut conn = db.conn()?;
    Ok(users::table
        .filter(users::role.eq(Role::Admin.as_str()))
        .filter(users::disabled.eq(false))
        .count()
        .get_result(&mut *conn)?)
}

/// Sets a new password and ends the user's sessions.
pub fn set_password(db: &Db, name: &str, password: &str) -> Result<(), UserError> {
    let hash = password::hash(password)?;
    let mut conn = db.conn()?;
    let id = id_of(&mut conn, name)?;
    diesel::update(users::table.find(id))
        .set(users::password_hash.eq(hash))
        .execute(&mut *conn)?;
    diesel::delete(sessions::table.filter(sessions::user_id.eq(id))).execute(&mut *conn)?;
    Ok(())
}

/// Disables (or enables again) a user; disabling ends their sessions.
pub fn set_disabled(db: &Db, name: &str, disabled: bool) -> Result<(), UserError> {
    let mut conn = db.conn()?;
    let id = id_of(&mut conn, name)?;
    diesel::update(users::table.find(id))
        .set(users::disabled.eq(disabled))
        .execute(&mut *conn)?;
    if disabled {
        diesel::delete(sessions::table.filter(sessions::user_id.eq(id))).execute(&mut *conn)?;
    }
    Ok(())
}

/// Changes a user's role.
pub fn set_role(db: &Db, name: &str, role: Role) -> Result<(), UserError> {
    let mut conn = db.conn()?;
    let id = id_of(&mut conn, name)?;
    diesel::update(users::table.find(id))
        .set(users::role.eq(role.as_str()))
        .execute(&mut *conn)?;
    Ok(())
}

/// Notes a successful login.
pub fn record_login(db: &Db, id: i64) -> Result<(), DbError> {
    let mut conn = db.conn()?;
    diesel::update(users::table.find(id))
        .set(users::last_login_at.eq(Utc::now().naive_utc()))
        .execute(&mut *conn)?;
    Ok(())
}

fn id_of(conn: &mut crate::db::PooledConn, name: &str) -> Result<i64, UserError> {
    users::table
        .filter(users::username.eq(name))
        .select(users::id)
        .first(&mut **conn)
        .optional()?
        .ok_or_else(|| UserError::NotFound(name.to_owned()))
}
