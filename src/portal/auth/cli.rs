//! `kneenode user …`: the administrator's tools for portal users. The first admin is made
//! here; there is never a default password. Passwords come from the terminal (not echoed) or,
//! for scripts, from standard input with `--password-stdin`; never from the command line, where
//! other users could read them in the process list.

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context};

use super::users::{self, Role};
use crate::audit::{self, Event};
use crate::db::Db;

/// The `user` verbs.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user: `kneenode user add alice --role admin`.
    Add {
        /// Login name.
        name: String,
        /// `admin` or `clinician`.
        #[arg(long, value_parser = ["admin", "clinician"])]
        role: String,
        /// Read the password from standard input (one line) instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password (ends the user's sessions).
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from standard input (one line) instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user (ends their sessions; the account and its audit trail stay).
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// Login name.
        name: String,
    },
    /// List users.
    List,
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password("Password: ").context("reading the password")?;
    let again = rpassword::prompt_password("Again: ").context("reading the password")?;
    if first != again {
        bail!("the passwords differ");
    }
    Ok(first)
}

fn record(db: &Db, action: &str, name: &str) {
    let actor = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .map(|u| format!("cli:{u}"))
        .unwrap_or_else(|_| "cli".into());
    audit::record_or_log(
        db,
        &Event {
            kind: "admin",
            actor,
            action: action.into(),
            outcome: "ok".into(),
            detail: serde_json::json!({ "user": name }),
        },
    );
}

/// Runs one `user` verb.
pub fn run(db: &Db, cmd: &UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let role = Role::parse(role).context("role must be admin or clinician")?;
            if !users::valid_name(name) {
                bail!("user name {name:?} is not valid: use 1–64 letters, digits, '.', '_', '-' or '@'");
            }
            let pw = read_password(*password_stdin)?;
            users::add(db, name, role, &pw)?;
            record(db, "user-add", name);
            println!("user {name} added ({})", role.as_str());
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let pw = read_password(*password_stdin)?;
            users::set_password(db, name, &pw)?;
            record(db, "user-passwd", name);
            println!("password of {name} changed; their sessions have ended");
        }
        UserCommand::Disable { name } => {
            users::set_disabled(db, name, true)?;
            record(db, "user-disable", name);
            println!("user {name} disabled");
        }
        UserCommand::Enable { name } => {
            users::set_disabled(db, name, false)?;
            record(db, "user-enable", name);
            println!("user {name} enabled");
        }
        UserCommand::List => {
            println!("{:<24} {:<10} {:<9} last login", "user", "role", "state");
            for u in users::list(db)? {
                println!(
                    "{:<24} {:<10} {:<9} {}",
                    u.username,
                    u.role,
                    if u.disabled { "disabled" } else { "active" },
                    u.last_login_at.map_or_else(
                        || "never".into(),
                        |t| t.format("%Y-%m-%d %H:%M UTC").to_string()
                    )
                );
            }
        }
    }
    Ok(())
}
