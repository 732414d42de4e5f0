//! Request heads: parsing with `httparse`, framing validation, and the [`Request`] view
//! handlers receive.
//!
//! `httparse` does the HTTP/1.x syntax; this module adds the semantics `httparse` leaves to
//! the server (RFC 9112 §6): `Content-Length` validation, refusal of `Transfer-Encoding`,
//! `Host` rules, `Connection` keep-alive rules, `Expect: 100-continue`, and the request
//! target forms of RFC 9112 §3.2.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::error::{ApiError, ErrorCode};
use crate::server::Limits;

/// Request methods the server distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD (answered like GET without the body)
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
    /// OPTIONS
    Options,
    /// Any other method token; see [`Request::method_str`].
    Other,
}

impl Method {
    /// Parses a method token (case-sensitive, RFC 9110 §9.1).
    pub fn from_token(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "PATCH" => Self::Patch,
            "OPTIONS" => Self::Options,
            _ => Self::Other,
        }
    }

    /// The method token (`""` for [`Method::Other`]).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Options => "OPTIONS",
            Self::Other => "",
        }
    }
}

/// HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: closes after each response unless `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: persistent unless `Connection: close`.
    Http11,
}

/// Identifies one request: the connection it came on and its sequence number there.
/// Handlers key per-request state (streamed uploads, long polls) by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    /// The connection's id (assigned by [`crate::Server::open`]).
    pub connection: u64,
    /// 0 for the connection's first request, then 1, 2, ...
    pub sequence: u64,
}

/// An owned, validated request head (kept by the connection while the body streams in or a
/// response is pending).
#[derive(Debug, Clone)]
pub(crate) struct RequestHead {
    pub id: RequestId,
    pub method: Method,
    pub method_token: String,
    pub version: Version,
    pub target: String,
    /// Byte range of the path in `target` (absolute-form targets have a scheme/authority).
    pub path_start: usize,
    pub path_end: usize,
    pub headers: Vec<(String, Vec<u8>)>,
    pub content_length: u64,
    pub content_length_given: bool,
    pub keep_alive: bool,
    /// HTTP/1.0 client asked for keep-alive explicitly: echo the token.
    pub keep_alive_token: bool,
    pub expect_continue: bool,
}

/// What a handler sees of a request: method, target, header fields, body length.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    head: &'a RequestHead,
}

impl<'a> Request<'a> {
    pub(crate) fn new(head: &'a RequestHead) -> Self {
        Self { head }
    }

    /// Which request this is.
    pub fn id(&self) -> RequestId {
        self.head.id
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.head.method
    }

    /// The method token as sent (useful for [`Method::Other`]).
    pub fn method_str(&self) -> &'a str {
        &self.head.method_token
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.head.version
    }

    /// The request target as sent.
    pub fn target(&self) -> &'a str {
        &self.head.target
    }

    /// The path, still percent-encoded (`/v1/tds/a%20b`). `"*"` for asterisk-form.
    pub fn path(&self) -> &'a str {
        self.head
            .target
            .get(self.head.path_start..self.head.path_end)
            .unwrap_or("/")
    }

    /// The query string after `?` (without it, still percent-encoded), `""` when absent.
    pub fn query(&self) -> &'a str {
        let rest = self.head.target.get(self.head.path_end..).unwrap_or("");
        let rest = rest.strip_prefix('?').unwrap_or("");
        rest.split('#').next().unwrap_or("")
    }

    /// The first header field named `name` (case-insensitive) if its value is UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.header_bytes(name)
            .and_then(|v| core::str::from_utf8(v).ok())
    }

    /// The first header field named `name` (case-insensitive), raw.
    pub fn header_bytes(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// All header fields in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The announced body length (`Content-Length`, 0 when absent).
    pub fn content_length(&self) -> u64 {
        self.head.content_length
    }

    /// Whether the request carried a `Content-Length` field (routes that need a body answer
    /// 411 without one).
    pub fn has_content_length(&self) -> bool {
        self.head.content_length_given
    }

    /// Whether the connection stays open after this request's response.
    pub fn keep_alive(&self) -> bool {
        self.head.keep_alive
    }
}

/// Outcome of parsing the bytes at the start of the input buffer.
pub(crate) enum HeadParse {
    /// More bytes are needed.
    Partial,
    /// A valid head of this many bytes.
    Complete(RequestHead, usize),
    /// A framing error: answer it and close the connection.
    Invalid(ApiError),
}

/// Parses and validates one request head at the start of `buf`.
pub(crate) fn parse_head(buf: &[u8], limits: &Limits, id: RequestId) -> HeadParse {
    // Every header line takes at least 4 bytes ("a:\r\n"), so a head within the byte limit
    // never needs more slots than this; a larger `max_headers` must not allocate more.
    let slots = limits.max_headers.min(limits.max_header_bytes / 4 + 1);
    let mut headers = vec![httparse::EMPTY_HEADER; slots];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => HeadParse::Partial,
        Ok(httparse::Status::Complete(len)) => match validate(&parsed, id) {
            Ok(head) => HeadParse::Complete(head, len),
            Err(err) => HeadParse::Invalid(err),
        },
        Err(httparse::Error::TooManyHeaders) => HeadParse::Invalid(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("more than {} header fields", limits.max_headers),
        )),
        Err(httparse::Error::Version) => HeadParse::Invalid(ApiError::bad_request(
            "unsupported HTTP version; HTTP/1.0 and HTTP/1.1 are served",
        )),
        Err(err) => HeadParse::Invalid(ApiError::bad_request(format!("malformed request: {err}"))),
    }
}

fn validate(parsed: &httparse::Request<'_, '_>, id: RequestId) -> Result<RequestHead, ApiError> {
    let (Some(method_token), Some(target), Some(version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(ApiError::bad_request("malformed request line"));
    };
    let version = if version == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let method = Method::from_token(method_token);

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<Vec<u8>> = None;
    let mut hosts = 0usize;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = field.name;
        let value = field.value;
        if name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(value)?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err(ApiError::bad_request("conflicting Content-Length fields"));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        headers.push((name.to_owned(), value.to_owned()));
    }

    if let Some(coding) = transfer_encoding {
        let last = coding
            .rsplit(|&b| b == b',')
            .next()
            .unwrap_or(&[])
            .trim_ascii();
        return Err(if last.eq_ignore_ascii_case(b"chunked") {
            ApiError::new(
                ErrorCode::LengthRequired,
                "chunked transfer coding is not supported; send the body with Content-Length",
            )
        } else {
            ApiError::new(
                ErrorCode::NotImplemented,
                "Transfer-Encoding is not supported; send the body with Content-Length",
            )
        });
    }
    // Without Content-Length (and Transfer-Encoding) a request has no body (RFC 9112 §6.3);
    // routes that need a body refuse its absence with 411 (`Request::has_content_length`).
    match (version, hosts) {
        (Version::Http11, 0) => return Err(ApiError::bad_request("missing Host header")),
        (_, n) if n > 1 => return Err(ApiError::bad_request("more than one Host header")),
        _ => {}
    }

    let (path_start, path_end) = locate_path(target)?;
    let keep_alive = match version {
        Version::Http11 => !conn_close,
        Version::Http10 => conn_keep_alive && !conn_close,
    };
    Ok(RequestHead {
        id,
        method,
        method_token: method_token.to_owned(),
        version,
        target: target.to_owned(),
        path_start,
        path_end,
        headers,
        content_length: content_length.unwrap_or(0),
        content_length_given: content_length.is_some(),
        keep_alive,
        keep_alive_token: keep_alive && version == Version::Http10,
        expect_continue: expect_continue && version == Version::Http11,
    })
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6); lists and signs are rejected.
fn parse_content_length(value: &[u8]) -> Result<u64, ApiError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ApiError::bad_request("invalid Content-Length"));
    }
    digits
        .iter()
        .try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| ApiError::bad_request("Content-Length out of range"))
}

/// Finds the path inside a request target: origin-form (`/p?q`), absolute-form
/// (`http://host/p?q`) or asterisk-form (`*`). Returns the byte range of the path.
fn locate_path(target: &str) -> Result<(usize, usize), ApiError> {
    let start = if target.starts_with('/') || target == "*" {
        0
    } else {
        let lower_has = |scheme: &str| {
            target
                .get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        };
        let scheme_len = if lower_has("http://") {
            7
        } else if lower_has("https://") {
            8
        } else {
            return Err(ApiError::bad_request("invalid request target"));
        };
        let rest = target.get(scheme_len..).unwrap_or("");
        match rest.find(['/', '?', '#']) {
            Some(i) => scheme_len + i,
            None => target.len(),
        }
    };
    let rest = target.get(start..).unwrap_or("");
    let end = start + rest.find(['?', '#']).unwrap_or(rest.len());
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: RequestId = RequestId {
        connection: 1,
        sequence: 0,
    };

    fn parse(raw: &str) -> Result<(RequestHead, usize), ApiError> {
        match parse_head(raw.as_bytes(), &Limits::default(), ID) {
            HeadParse::Complete(head, n) => Ok((head, n)),
            HeadParse::Invalid(err) => Err(err),
            HeadParse::Partial => panic!("partial: {raw:?}"),
        }
    }

    #[test]
    fn parses_origin_form_with_query() {
        let raw = "GET /v1/tds/7?offset=3 HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\nrest";
        let (head, n) = parse(raw).unwrap();
        assert_eq!(n, raw.len() - 4);
        let req = Request::new(&head);
        assert_eq!(req.method(), Method::Get);
        assert_eq!(req.path(), "/v1/tds/7");
        assert_eq!(req.query(), "offset=3");
        assert_eq!(req.header("x-a"), Some("b"));
        assert!(req.keep_alive());
        assert_eq!(req.content_length(), 0);
    }

    #[test]
    fn absolute_and_asterisk_forms() {
        let (head, _) = parse("GET http://h:80/v1/health?a HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(Request::new(&head).path(), "/v1/health");
        assert_eq!(Request::new(&head).query(), "a");
        let (head, _) = parse("GET HTTP://h HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(Request::new(&head).path(), "");
        let (head, _) = parse("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(Request::new(&head).path(), "*");
        assert!(parse("GET v1 HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &str| parse(raw).unwrap().0.keep_alive;
        assert!(ka("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n"
        ));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n"
        ));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn content_length_validation() {
        let cl = |v: &str| {
            parse(&format!(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {v}\r\n\r\n"
            ))
            .map(|(h, _)| h.content_length)
        };
        assert_eq!(cl("12").unwrap(), 12);
        assert_eq!(cl(" 0 ").unwrap(), 0);
        for bad in ["-1", "+1", "1,1", "0x10", "", "99999999999999999999999"] {
            assert_eq!(cl(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
        let dup = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse(dup).unwrap_err().code, ErrorCode::BadRequest);
        let same = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse(same).unwrap().0.content_length, 2);
    }

    #[test]
    fn transfer_encoding_and_missing_length() {
        let chunked = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let err = parse(chunked).unwrap_err();
        assert_eq!(err.code, ErrorCode::LengthRequired);
        assert!(err.message.contains("chunked"));
        let gzip = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(parse(gzip).unwrap_err().code, ErrorCode::NotImplemented);
        // No Content-Length: no body (the route decides whether it needs one).
        let put = "PUT / HTTP/1.1\r\nHost: h\r\n\r\n";
        let (head, _) = parse(put).unwrap();
        assert_eq!(head.content_length, 0);
        assert!(!Request::new(&head).has_content_length());
        let (head, _) = parse("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(Request::new(&head).has_content_length());
        assert!(parse("DELETE / HTTP/1.1\r\nHost: h\r\n\r\n").is_ok());
    }

    #[test]
    fn host_rules_and_syntax_errors() {
        assert_eq!(
            parse("GET / HTTP/1.1\r\n\r\n").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
        assert_eq!(
            parse("GET / HTTP/2.0\r\n\r\n").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn too_many_headers_is_431() {
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
        match parse_head(raw, &limits, ID) {
            HeadParse::Invalid(err) => assert_eq!(err.code, ErrorCode::HeadersTooLarge),
            _ => panic!("expected 431"),
        }
    }

    #[test]
    fn expect_continue_only_for_http11() {
        let raw = "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
        assert!(parse(raw).unwrap().0.expect_continue);
        let raw = "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert!(!parse(raw).unwrap().0.expect_continue);
    }
}

/// Helpers for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Parses a complete, valid head or panics.
    pub(crate) fn head(raw: &str) -> RequestHead {
        let id = RequestId {
            connection: 1,
            sequence: 0,
        };
        match parse_head(raw.as_bytes(), &Limits::default(), id) {
            HeadParse::Complete(head, _) => head,
            _ => panic!("not a valid head: {raw:?}"),
        }
    }
}
