//! Percent-decoding of path segments and query strings, and query-string parsing.
//!
//! Hand-written on purpose (a few lines): the API must *reject* malformed escapes
//! (`%G1`, a trailing `%`) and escapes that decode to invalid UTF-8 with a 400, whereas the
//! `percent-encoding`/`form_urlencoded` crates decode leniently (keep a bad `%` literally,
//! replace invalid UTF-8), which would turn client bugs into silently different parameters.

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::ApiError;

/// Why a percent-encoded string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `%` not followed by two hex digits.
    #[error("malformed percent escape")]
    BadEscape,
    /// The decoded bytes are not UTF-8.
    #[error("percent escapes decode to invalid UTF-8")]
    InvalidUtf8,
}

/// Decodes `%XX` escapes in `s` (and `+` as a space when `plus_is_space`, for query
/// strings). Borrows when there is nothing to decode.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<Cow<'_, str>, DecodeError> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes
                    .next()
                    .and_then(hex_value)
                    .ok_or(DecodeError::BadEscape)?;
                let lo = bytes
                    .next()
                    .and_then(hex_value)
                    .ok_or(DecodeError::BadEscape)?;
                out.push(hi << 4 | lo);
            }
            b'+' if plus_is_space => out.push(b' '),
            other => out.push(other),
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| DecodeError::InvalidUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A decoded query string (`a=1&b=x%20y`): name/value pairs in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string (without the `?`). Empty pieces (`a=1&&b=2`) are skipped;
    /// a piece without `=` has an empty value. Bad escapes are a 400 naming the field.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for piece in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = percent_decode(name, true)
                .map_err(|e| ApiError::bad_request(format!("query parameter name: {e}")))?;
            let value = percent_decode(value, true).map_err(|e| {
                ApiError::bad_request(format!("query parameter {name}: {e}"))
                    .with_field(String::from(name.as_ref()))
            })?;
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self { pairs })
    }

    /// The first value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All pairs in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Parameter `name` as a decimal `u64`; absent is `Ok(None)`, anything else but
    /// digits is a 400 with `"field": name`.
    pub fn get_u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::bad_request(format!(
                "query parameter {name} must be a decimal integer"
            ))
            .with_field(String::from(name)));
        }
        value.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!("query parameter {name} is out of range"))
                .with_field(String::from(name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn decodes_escapes_strictly() {
        assert_eq!(percent_decode("a%20b", false).unwrap(), "a b");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert_eq!(percent_decode("%C3%A9", false).unwrap(), "é");
        assert!(matches!(
            percent_decode("plain", false).unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(percent_decode("%", false), Err(DecodeError::BadEscape));
        assert_eq!(percent_decode("%4", false), Err(DecodeError::BadEscape));
        assert_eq!(percent_decode("%G0", false), Err(DecodeError::BadEscape));
        assert_eq!(percent_decode("%FF", false), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn parses_query_pairs() {
        let q = Query::parse("offset=10&name=a%2Fb+c&flag&&offset=11").unwrap();
        assert_eq!(q.get("offset"), Some("10"));
        assert_eq!(q.get("name"), Some("a/b c"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
        assert_eq!(q.pairs().count(), 4);
        assert_eq!(q.get_u64("offset").unwrap(), Some(10));
        assert_eq!(q.get_u64("missing").unwrap(), None);
    }

    #[test]
    fn bad_numbers_name_the_field() {
        let q = Query::parse("offset=-1&big=99999999999999999999").unwrap();
        let err = q.get_u64("offset").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(err.field.as_deref(), Some("offset"));
        assert_eq!(q.get_u64("big").unwrap_err().field.as_deref(), Some("big"));
        let err = Query::parse("offset=%ZZ").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("offset"));
    }
}
