//! Bearer-token authentication of the management API (RFC 6750, `Authorization: Bearer`).
//!
//! Every route but the public ones (health) requires `Authorization: Bearer <token>`; the
//! token is compared in constant time and a missing or wrong one is answered 401 with a
//! `WWW-Authenticate: Bearer realm="tdx-appliance"` challenge and the usual JSON error body.
//!
//! Each token has a [`Role`]: `admin` may call everything, `reader` only the routes that
//! change nothing ([`Access::Reader`], the GET routes; typing into a console is a POST). A
//! reader's call to an [`Access::Admin`] route is answered 403 `forbidden` with an
//! `insufficient_scope` challenge (RFC 6750 §3.1).
//!
//! The comparison is written here rather than taken from a crate: it is a dozen lines, and
//! the property that matters (the time depends only on the length of what the client sent,
//! never on the secret's bytes or length) is easier to see than to check in a dependency.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::error::{ApiError, ErrorCode};
use crate::request::Request;
use crate::response::Response;
use crate::state::Access;

/// The realm named in every `WWW-Authenticate` challenge.
pub const REALM: &str = "tdx-appliance";

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;

/// A token clients must present. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

/// Why a text is not a usable bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing given.
    #[error("the token is empty")]
    Empty,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("the token is longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    /// A character outside RFC 6750's `b64token` alphabet.
    #[error(
        "character {position} of the token is not one of A-Z a-z 0-9 - . _ ~ + / (or `=` at the end)"
    )]
    BadCharacter {
        /// 1-based position of the first bad character.
        position: usize,
    },
}

impl BearerToken {
    /// Validates `text` as an RFC 6750 `b64token`:
    /// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`, at most
    /// [`MAX_TOKEN_LEN`] bytes.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let body_len = text.trim_end_matches('=').len();
        if body_len == 0 {
            return Err(TokenError::BadCharacter { position: 1 });
        }
        if let Some(index) = text
            .bytes()
            .take(body_len)
            .position(|b| !(b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)))
        {
            return Err(TokenError::BadCharacter {
                position: index + 1,
            });
        }
        Ok(Self(String::from(text)))
    }

    /// A token made of random bytes, written as lowercase hex (two characters per byte).
    pub fn from_random_bytes(bytes: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(bytes.len() * 2);
        for &byte in bytes.iter().take(MAX_TOKEN_LEN / 2) {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(text)
    }

    /// The token text (to print it once on the console when it was generated).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that depends only on `presented.len()`.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        // Any length difference makes `diff` non-zero; then every presented byte is folded
        // in against a secret byte (cycling through the secret), so the loop runs the same
        // way whatever the secret holds or how long it is.
        let mut diff = u8::from(secret.len() != presented.len());
        for (index, &byte) in presented.iter().enumerate() {
            let expected = match secret.len() {
                0 => 0,
                len => secret.get(index % len).copied().unwrap_or(0),
            };
            diff |= byte ^ expected;
        }
        core::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken(<{} characters>)", self.0.len())
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET routes only: state, consoles, events, metrics; no console input.
    Reader,
    /// Every route.
    Admin,
}

impl Role {
    /// `"reader"` or `"admin"`, as written in `appliance.toml`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Admin => "admin",
        }
    }

    /// The role named `text` (`"reader"` or `"admin"`, exactly).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reader" => Some(Self::Reader),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Whether this role may call a route with `access`.
    pub const fn may(self, access: Access) -> bool {
        match access {
            Access::Public | Access::Reader => true,
            Access::Admin => matches!(self, Self::Admin),
        }
    }
}

/// Longest token list accepted (a bound on the per-request comparison work).
pub const MAX_TOKENS: usize = 64;

/// Why a token cannot join a [`TokenSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenSetError {
    /// The same token is already in the set (with either role).
    #[error("the same token is listed twice")]
    Duplicate,
    /// The set already holds [`MAX_TOKENS`].
    #[error("at most {MAX_TOKENS} tokens are accepted")]
    Full,
}

/// The tokens the API accepts, each with its role. Empty = every protected route is
/// refused (the API fails closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    entries: Vec<(BearerToken, Role)>,
}

impl TokenSet {
    /// No tokens.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Adds `token` with `role`.
    pub fn insert(&mut self, token: BearerToken, role: Role) -> Result<(), TokenSetError> {
        if self.entries.iter().any(|(known, _)| known.0 == token.0) {
            return Err(TokenSetError::Duplicate);
        }
        if self.entries.len() >= MAX_TOKENS {
            return Err(TokenSetError::Full);
        }
        self.entries.push((token, role));
        Ok(())
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first token with `role`, in the order they were inserted (for host tooling that
    /// needs one to call the API with).
    pub fn first_with(&self, role: Role) -> Option<&BearerToken> {
        self.entries
            .iter()
            .find(|(_, r)| *r == role)
            .map(|(token, _)| token)
    }

    /// How many tokens have `role`.
    pub fn count(&self, role: Role) -> usize {
        self.entries.iter().filter(|(_, r)| *r == role).count()
    }

    /// The role of the token `presented` is, if any. Every token is compared (no early
    /// exit), so the time depends on the number of tokens and `presented.len()` only.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut found = None;
        for (token, role) in &self.entries {
            if token.matches(presented) {
                found = Some(*role);
            }
        }
        found
    }
}

/// What a request's `Authorization` header field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No `Authorization` field.
    Missing,
    /// A field that is not `Bearer <token>` (another scheme, no token).
    Malformed,
    /// `Bearer <token>`.
    Bearer(&'a [u8]),
}

/// Reads the credentials of `req` (scheme matched case-insensitively, surrounding blanks
/// ignored).
pub fn credentials<'a>(req: &Request<'a>) -> Credentials<'a> {
    let Some(value) = req.header_bytes("authorization") else {
        return Credentials::Missing;
    };
    let value = value.trim_ascii();
    let Some((scheme, token)) = value.split_at_checked(6) else {
        return Credentials::Malformed;
    };
    if !scheme.eq_ignore_ascii_case(b"Bearer") || token.first().is_none_or(|b| *b != b' ') {
        return Credentials::Malformed;
    }
    match token.trim_ascii() {
        [] => Credentials::Malformed,
        token => Credentials::Bearer(token),
    }
}

/// Checks a request for a route with `access` against `tokens`: 401 without a known token
/// (an empty set refuses every request: the API fails closed), 403 when the token's role
/// may not call the route.
pub fn authorize(req: &Request<'_>, tokens: &TokenSet, access: Access) -> Result<(), Response> {
    if access == Access::Public {
        return Ok(());
    }
    let role = match credentials(req) {
        Credentials::Missing => {
            return Err(unauthorized(
                "this endpoint needs `Authorization: Bearer <token>`",
                None,
            ));
        }
        Credentials::Malformed => {
            return Err(unauthorized(
                "the Authorization header is not `Bearer <token>`",
                Some("invalid_request"),
            ));
        }
        Credentials::Bearer(presented) => tokens.role_of(presented),
    };
    match role {
        None => Err(unauthorized(
            "the bearer token is not valid",
            Some("invalid_token"),
        )),
        Some(role) if role.may(access) => Ok(()),
        Some(_) => Err(forbidden()),
    }
}

/// The 403 answer to a `reader` token on an `admin` route.
pub fn forbidden() -> Response {
    Response::error(&ApiError::new(
        ErrorCode::Forbidden,
        "this token has the `reader` role, which may only read (GET); this call needs an \
         `admin` token",
    ))
    .with_header(
        "WWW-Authenticate",
        alloc::format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\""),
    )
}

/// A 401 answer with its `WWW-Authenticate` challenge (`error` per RFC 6750 §3.1).
pub fn unauthorized(message: &'static str, error: Option<&str>) -> Response {
    let challenge = match error {
        Some(error) => alloc::format!("Bearer realm=\"{REALM}\", error=\"{error}\""),
        None => alloc::format!("Bearer realm=\"{REALM}\""),
    };
    Response::error(&ApiError::new(ErrorCode::Unauthorized, message))
        .with_header("WWW-Authenticate", challenge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::tests_support::head;
    use crate::response::StatusCode;
    use alloc::format;

    fn request_with(auth: Option<&str>) -> crate::request::RequestHead {
        let line = auth.map_or_else(String::new, |value| format!("Authorization: {value}\r\n"));
        head(&format!("GET /v1/host HTTP/1.1\r\nHost: h\r\n{line}\r\n"))
    }

    #[test]
    fn accepts_b64token_texts() {
        for text in [
            "T",
            "abc-._~+/XYZ09",
            "dG9rZW4=",
            "a==",
            &"x".repeat(MAX_TOKEN_LEN),
        ] {
            assert_eq!(
                BearerToken::new(text).map(|t| t.as_str().len()),
                Ok(text.len())
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_b64token() {
        assert_eq!(BearerToken::new(""), Err(TokenError::Empty));
        assert_eq!(
            BearerToken::new(&"x".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong)
        );
        assert_eq!(
            BearerToken::new("ab cd"),
            Err(TokenError::BadCharacter { position: 3 })
        );
        assert_eq!(
            BearerToken::new("a=b"),
            Err(TokenError::BadCharacter { position: 2 })
        );
        assert_eq!(
            BearerToken::new("==="),
            Err(TokenError::BadCharacter { position: 1 })
        );
        assert_eq!(
            BearerToken::new("tök"),
            Err(TokenError::BadCharacter { position: 2 })
        );
    }

    #[test]
    fn random_tokens_are_hex_and_valid() {
        let token = BearerToken::from_random_bytes(&[0x00, 0xab, 0xff, 0x10]);
        assert_eq!(token.as_str(), "00abff10");
        assert!(BearerToken::new(token.as_str()).is_ok());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let token = BearerToken::new("s3cret").unwrap();
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn matches_only_the_exact_token() {
        let token = BearerToken::new("secret-token").unwrap();
        assert!(token.matches(b"secret-token"));
        assert!(!token.matches(b"secret-tokeN"));
        assert!(!token.matches(b"secret-token-and-more"));
        assert!(!token.matches(b"secret"));
        assert!(!token.matches(b""));
        // A presented token that repeats a short secret must not match it.
        let short = BearerToken::new("ab").unwrap();
        assert!(!short.matches(b"abab"));
    }

    #[test]
    fn reads_bearer_credentials() {
        let h = request_with(Some("Bearer abc"));
        assert_eq!(credentials(&Request::new(&h)), Credentials::Bearer(b"abc"));
        let h = request_with(Some("bearer   abc  "));
        assert_eq!(credentials(&Request::new(&h)), Credentials::Bearer(b"abc"));
        let h = request_with(None);
        assert_eq!(credentials(&Request::new(&h)), Credentials::Missing);
        for value in ["Basic YWJj", "Bearer", "Bearerabc", "Bearer    "] {
            let h = request_with(Some(value));
            assert_eq!(
                credentials(&Request::new(&h)),
                Credentials::Malformed,
                "{value}"
            );
        }
    }

    fn tokens(list: &[(&str, Role)]) -> TokenSet {
        let mut set = TokenSet::new();
        for (text, role) in list {
            set.insert(BearerToken::new(text).unwrap(), *role).unwrap();
        }
        set
    }

    #[test]
    fn authorize_answers_401_with_a_challenge() {
        let token = tokens(&[("good", Role::Admin)]);
        let ok = request_with(Some("Bearer good"));
        assert!(authorize(&Request::new(&ok), &token, Access::Admin).is_ok());
        for (auth, error) in [
            (None, None),
            (Some("Bearer bad"), Some("invalid_token")),
            (Some("Basic Z29vZA=="), Some("invalid_request")),
        ] {
            let h = request_with(auth);
            let resp = authorize(&Request::new(&h), &token, Access::Reader).unwrap_err();
            assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
            let challenge = resp.header("www-authenticate").unwrap();
            assert!(challenge.starts_with("Bearer realm=\"tdx-appliance\""));
            match error {
                Some(error) => assert!(challenge.contains(error), "{challenge}"),
                None => assert!(!challenge.contains("error="), "{challenge}"),
            }
            let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(body["code"], "unauthorized");
        }
    }

    #[test]
    fn without_a_configured_token_everything_is_refused() {
        let h = request_with(Some("Bearer anything"));
        for access in [Access::Reader, Access::Admin] {
            let resp = authorize(&Request::new(&h), &TokenSet::new(), access).unwrap_err();
            assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        }
        assert!(authorize(&Request::new(&h), &TokenSet::new(), Access::Public).is_ok());
    }

    #[test]
    fn a_reader_may_read_and_is_refused_403_elsewhere() {
        let set = tokens(&[("boss", Role::Admin), ("viewer", Role::Reader)]);
        let admin = request_with(Some("Bearer boss"));
        let reader = request_with(Some("Bearer viewer"));
        for access in [Access::Public, Access::Reader, Access::Admin] {
            assert!(authorize(&Request::new(&admin), &set, access).is_ok());
        }
        assert!(authorize(&Request::new(&reader), &set, Access::Reader).is_ok());
        let resp = authorize(&Request::new(&reader), &set, Access::Admin).unwrap_err();
        assert_eq!(resp.status, StatusCode::FORBIDDEN);
        let challenge = resp.header("www-authenticate").unwrap();
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["code"], "forbidden");
        assert!(body["message"].as_str().unwrap().contains("reader"));
    }

    #[test]
    fn token_sets_refuse_duplicates_and_bound_their_size() {
        let mut set = tokens(&[("one", Role::Reader)]);
        let again = BearerToken::new("one").unwrap();
        assert_eq!(
            set.insert(again, Role::Admin),
            Err(TokenSetError::Duplicate)
        );
        for index in 1..MAX_TOKENS {
            let token = BearerToken::new(&format!("t{index}")).unwrap();
            set.insert(token, Role::Reader).unwrap();
        }
        let extra = BearerToken::new("extra").unwrap();
        assert_eq!(set.insert(extra, Role::Admin), Err(TokenSetError::Full));
        assert_eq!(set.count(Role::Reader), MAX_TOKENS);
        assert_eq!(set.count(Role::Admin), 0);
        assert_eq!(set.role_of(b"t5"), Some(Role::Reader));
        assert_eq!(
            set.first_with(Role::Reader).map(BearerToken::as_str),
            Some("one")
        );
        assert!(set.first_with(Role::Admin).is_none());
        assert_eq!(set.role_of(b"t"), None);
    }

    #[test]
    fn roles_parse_only_their_exact_names() {
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("reader"), Some(Role::Reader));
        for text in ["Admin", "read", "", "admin "] {
            assert_eq!(Role::parse(text), None, "{text}");
        }
        assert_eq!(Role::Reader.as_str(), "reader");
    }
}
