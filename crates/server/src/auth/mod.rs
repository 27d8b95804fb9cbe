//! The pieces of authentication, one job per module. The request extractor
//! that puts them together, so that a handler cannot forget to check the
//! token or its session, is [`crate::http::Authed`].

pub mod bearer;
pub mod issue;
pub mod password;
pub mod verified_tokens;
