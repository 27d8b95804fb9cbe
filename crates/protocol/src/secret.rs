//! Secrets held in memory: tokens and passwords are [`SecretString`]s
//! (from `secrecy`), whose `Debug` prints `[REDACTED]` and whose memory is
//! zeroed on drop. Reading one takes an explicit
//! [`ExposeSecret::expose_secret`], which is easy to find in a review: it
//! belongs only where a secret leaves the process (a request, the keychain).

use serde::Serializer;

pub use secrecy::{ExposeSecret, SecretString};

/// `serialize_with` for a secret that must go on the wire or into the
/// keychain as its plain text.
pub fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

#[cfg(test)]
mod tests {
    use crate::{TokenResponse, UserInfo};

    use super::*;

    #[test]
    fn tokens_go_on_the_wire_but_never_into_debug() {
        let tokens = TokenResponse {
            access_token: "eyJ.access.sig".into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            refresh_token: "refresh-secret-42".into(),
            refresh_expires_in: 86_400,
            session_id: "sid".into(),
            user: UserInfo {
                id: "u1".into(),
                username: "ann".into(),
            },
        };
        let shown = format!("{tokens:?} {tokens:#?}");
        assert!(!shown.contains("eyJ.access.sig") && !shown.contains("refresh-secret-42"));
        assert!(shown.contains("ann"), "the rest stays readable: {shown}");

        let json = serde_json::to_string(&tokens).unwrap();
        assert!(
            json.contains(r#""access_token":"eyJ.access.sig""#),
            "{json}"
        );
        let back: TokenResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back.refresh_token.expose_secret(), "refresh-secret-42");
        assert_eq!(back.access_token.expose_secret(), "eyJ.access.sig");
    }

    #[test]
    fn a_password_change_keeps_its_passwords_out_of_debug() {
        let change: crate::PasswordChange =
            serde_json::from_str(r#"{"current_password":"old-pw-1","new_password":"new-pw-2"}"#)
                .unwrap();
        let shown = format!("{change:?}");
        assert!(
            !shown.contains("old-pw-1") && !shown.contains("new-pw-2"),
            "{shown}"
        );
        assert_eq!(change.new_password.expose_secret(), "new-pw-2");
        assert!(crate::password_length_problem("1234567").is_some());
        assert!(crate::password_length_problem("12345678").is_none());
        assert!(crate::password_length_problem(&"é".repeat(513)).is_some());
    }
}
