//! The user's devices and password (PROTOCOL.md v1.1, "Devices and
//! sessions"): the list of signed-in sessions, signing one or all the
//! others out, and a password change. All of it needs the server: offline
//! (or working offline) each call is [`Error::Offline`] at once, and the
//! session is untouched.

use latchkey_protocol::{PasswordChange, SecretString, SessionSummary, password_length_problem};
use uuid::Uuid;

use super::Engine;
use super::session::Active;
use crate::api;
use crate::error::{Error, Result};

impl Engine {
    /// The active account, if `what` can be asked of its server now.
    pub(super) fn reachable(&self, what: &'static str) -> Result<Active> {
        let of = self.session.active()?;
        if !self.reporter.online() || self.reporter.ensure_network().is_err() {
            return Err(Error::Offline(what));
        }
        Ok(of)
    }

    /// Every device signed in to the account, most recently seen first;
    /// this one has `current`.
    pub async fn list_sessions(&self) -> Result<Vec<SessionSummary>> {
        let of = self.reachable("the list of your devices")?;
        let (http, t) = (self.http.clone(), self.timeouts);
        let list = self
            .session
            .authed(&of, |token| {
                let (http, server) = (http.clone(), of.server.clone());
                async move { api::sessions(http.as_ref(), &server, &token, t).await }
            })
            .await?;
        Ok(list.sessions)
    }

    /// Signs another device out at once: it learns it at its next contact
    /// (at once if it is online), and keeps its unsynced changes. This
    /// device signs out with [`Engine::sign_out`] instead.
    pub async fn revoke_session(&self, session_id: &str) -> Result<()> {
        let id = Uuid::parse_str(session_id)
            .map_err(|_| Error::InvalidInput("that is not a session id".into()))?;
        let of = self.reachable("signing a device out")?;
        if self.session.is_current(&of, session_id) {
            return Err(Error::InvalidInput(
                "this is the device you are using; sign it out with Sign out".into(),
            ));
        }
        let (http, t) = (self.http.clone(), self.timeouts);
        self.session
            .authed(&of, |token| {
                let (http, server) = (http.clone(), of.server.clone());
                async move { api::revoke_session(http.as_ref(), &server, &token, id, t).await }
            })
            .await
    }

    /// Signs every other device of the account out; returns how many.
    pub async fn revoke_other_sessions(&self) -> Result<u64> {
        let of = self.reachable("signing the other devices out")?;
        let (http, t) = (self.http.clone(), self.timeouts);
        let count = self
            .session
            .authed(&of, |token| {
                let (http, server) = (http.clone(), of.server.clone());
                async move { api::revoke_other_sessions(http.as_ref(), &server, &token, t).await }
            })
            .await?;
        Ok(count.revoked)
    }

    /// Changes the account's password. On success every other device is
    /// signed out (their number is returned) and this one stays signed in,
    /// its keychain entry untouched. A wrong current password is
    /// [`Error::WrongPassword`] and counts as a failed sign-in on the
    /// server; too many is [`Error::Throttled`].
    pub async fn change_password(&self, current: &str, new: &str) -> Result<u64> {
        if current.is_empty() {
            return Err(Error::InvalidInput("enter your current password".into()));
        }
        if let Some(problem) = password_length_problem(new) {
            return Err(Error::InvalidInput(problem));
        }
        if new == current {
            return Err(Error::InvalidInput(
                "the new password is the same as the current one".into(),
            ));
        }
        let of = self.reachable("changing the password")?;
        let change = PasswordChange {
            current_password: SecretString::from(current.to_owned()),
            new_password: SecretString::from(new.to_owned()),
        };
        let (http, t) = (self.http.clone(), self.timeouts);
        let count = self
            .session
            .authed(&of, |token| {
                let (http, server, change) = (http.clone(), of.server.clone(), change.clone());
                async move { api::change_password(http.as_ref(), &server, &token, &change, t).await }
            })
            .await?;
        Ok(count.revoked)
    }
}
