//! Responses: status, header fields and body bytes, and their HTTP/1.1 serialisation.
//!
//! Handlers build a [`Response`]; the connection adds the framing fields it owns
//! (`Content-Length`, `Connection`) when it writes the response, so handlers cannot get
//! framing wrong. Handler-supplied fields that would break framing or the message syntax are
//! dropped at write time (see [`Response::with_header`]).

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use serde::Serialize;

use crate::error::ApiError;

/// An HTTP status code (100..=999).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatusCode(u16);

impl StatusCode {
    /// 200 OK.
    pub const OK: Self = Self(200);
    /// 201 Created.
    pub const CREATED: Self = Self(201);
    /// 202 Accepted.
    pub const ACCEPTED: Self = Self(202);
    /// 204 No Content.
    pub const NO_CONTENT: Self = Self(204);
    /// 304 Not Modified.
    pub const NOT_MODIFIED: Self = Self(304);
    /// 400 Bad Request.
    pub const BAD_REQUEST: Self = Self(400);
    /// 401 Unauthorized.
    pub const UNAUTHORIZED: Self = Self(401);
    /// 403 Forbidden.
    pub const FORBIDDEN: Self = Self(403);
    /// 404 Not Found.
    pub const NOT_FOUND: Self = Self(404);
    /// 405 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Self = Self(405);
    /// 408 Request Timeout.
    pub const REQUEST_TIMEOUT: Self = Self(408);
    /// 409 Conflict.
    pub const CONFLICT: Self = Self(409);
    /// 411 Length Required.
    pub const LENGTH_REQUIRED: Self = Self(411);
    /// 413 Content Too Large (RFC 9110 §15.5.14).
    pub const PAYLOAD_TOO_LARGE: Self = Self(413);
    /// 422 Unprocessable Content.
    pub const UNPROCESSABLE_CONTENT: Self = Self(422);
    /// 415 Unsupported Media Type
    pub const UNSUPPORTED_MEDIA_TYPE: Self = Self(415);
    /// 431 Request Header Fields Too Large (RFC 6585 §5).
    pub const REQUEST_HEADER_FIELDS_TOO_LARGE: Self = Self(431);
    /// 500 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Self = Self(500);
    /// 501 Not Implemented.
    pub const NOT_IMPLEMENTED: Self = Self(501);
    /// 503 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Self = Self(503);

    /// A status from its number; `None` outside 100..=999.
    pub const fn from_u16(code: u16) -> Option<Self> {
        if code >= 100 && code <= 999 {
            Some(Self(code))
        } else {
            None
        }
    }

    /// The number.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// The standard reason phrase, or `""` for codes without one here.
    pub const fn reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            204 => "No Content",
            304 => "Not Modified",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Content Too Large",
            415 => "Unsupported Media Type",
            422 => "Unprocessable Content",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "",
        }
    }

    /// Whether a response with this status carries no body by definition (RFC 9110 §6.4.1).
    const fn forbids_body(self) -> bool {
        self.0 < 200 || self.0 == 204 || self.0 == 304
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

/// A response produced by a handler: status, header fields, body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code. Interim (1xx) statuses are not allowed here and are answered as 500.
    pub status: StatusCode,
    /// Header fields in order. `Content-Length`, `Connection`, `Transfer-Encoding` and
    /// `Keep-Alive` are owned by the connection and ignored here.
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// Body bytes (not sent for HEAD requests, 204 and 304).
    pub body: Vec<u8>,
}

/// `Content-Type` of JSON responses.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `Content-Type` of plain-text responses.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    /// An empty response with this status.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON response. If `value` cannot be serialised, a 500 error response instead.
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status)
                .with_header("Content-Type", CONTENT_TYPE_JSON)
                .with_body(body),
            Err(_) => Self::error(&ApiError::internal("response could not be serialised")),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: StatusCode, text: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("Content-Type", CONTENT_TYPE_TEXT)
            .with_body(text.into().into_bytes())
    }

    /// The error response for `err`: its status and `{"code","message"[,"field"]}` body.
    pub fn error(err: &ApiError) -> Self {
        let body = serde_json::to_vec(err).unwrap_or_else(|_| {
            // Unreachable in practice (the type only holds strings); keep the shape anyway.
            br#"{"code":"internal","message":"error could not be serialised"}"#.to_vec()
        });
        Self::new(err.status)
            .with_header("Content-Type", CONTENT_TYPE_JSON)
            .with_body(body)
    }

    /// Adds a header field. Fields whose name is not an RFC 9110 token, whose value holds
    /// CR, LF or NUL, or which the connection owns (`Content-Length`, `Connection`,
    /// `Transfer-Encoding`, `Keep-Alive`) are dropped when the response is written.
    #[must_use]
    pub fn with_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// The first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the connection frames one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framing {
    /// The request was HEAD: send the header fields, not the body.
    pub head_request: bool,
    /// Send `Connection: close` (the connection closes after this response).
    pub close: bool,
    /// Send `Connection: keep-alive` (an HTTP/1.0 client asked for it).
    pub keep_alive_token: bool,
}

/// Whether `name` is an RFC 9110 token (the syntax of a field name).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_owned_by_connection(name: &str) -> bool {
    [
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
    ]
    .iter()
    .any(|owned| name.eq_ignore_ascii_case(owned))
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `resp` to `out` as an HTTP/1.1 message.
pub(crate) fn write_response(out: &mut Vec<u8>, resp: &Response, framing: Framing) {
    let internal;
    let resp = if resp.status.as_u16() < 200 {
        internal = Response::error(&ApiError::internal("handler produced an interim status"));
        &internal
    } else {
        resp
    };
    let mut w = VecWriter(out);
    // Writing into a Vec cannot fail; the results are ignored deliberately.
    let _ = write!(
        w,
        "HTTP/1.1 {} {}\r\n",
        resp.status.as_u16(),
        resp.status.reason()
    );
    for (name, value) in &resp.headers {
        let value_ok = !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if is_token(name) && value_ok && !is_owned_by_connection(name) {
            let _ = write!(w, "{}: {}\r\n", name, value.trim());
        }
    }
    let has_body = !resp.status.forbids_body();
    if has_body {
        let _ = write!(w, "Content-Length: {}\r\n", resp.body.len());
    }
    if framing.close {
        w.0.extend_from_slice(b"Connection: close\r\n");
    } else if framing.keep_alive_token {
        w.0.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    w.0.extend_from_slice(b"\r\n");
    if has_body && !framing.head_request {
        w.0.extend_from_slice(&resp.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Framing = Framing {
        head_request: false,
        close: false,
        keep_alive_token: false,
    };

    fn written(resp: &Response, framing: Framing) -> String {
        let mut out = Vec::new();
        write_response(&mut out, resp, framing);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_status_headers_length_and_body() {
        let resp = Response::text(StatusCode::OK, "hi").with_header("X-Trace", "7");
        assert_eq!(
            written(&resp, KEEP),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-Trace: 7\r\n\
             Content-Length: 2\r\n\r\nhi"
        );
    }

    #[test]
    fn head_request_keeps_length_but_drops_body() {
        let resp = Response::text(StatusCode::OK, "hello");
        let framing = Framing {
            head_request: true,
            close: true,
            keep_alive_token: false,
        };
        assert_eq!(
            written(&resp, framing),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn drops_injected_and_connection_owned_headers() {
        let resp = Response::new(StatusCode::OK)
            .with_header("X-Evil", "a\r\nSet-Cookie: b")
            .with_header("Bad Name", "x")
            .with_header("content-length", "99")
            .with_header("Connection", "upgrade")
            .with_header("X-Good", "ok");
        assert_eq!(
            written(&resp, KEEP),
            "HTTP/1.1 200 OK\r\nX-Good: ok\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn no_content_has_no_length_or_body_and_interim_becomes_500() {
        let resp = Response::new(StatusCode::NO_CONTENT).with_body(b"x".to_vec());
        assert_eq!(written(&resp, KEEP), "HTTP/1.1 204 No Content\r\n\r\n");
        let interim = Response::new(StatusCode::from_u16(101).unwrap());
        assert!(written(&interim, KEEP).starts_with("HTTP/1.1 500 "));
    }

    #[test]
    fn status_range_is_checked() {
        assert!(StatusCode::from_u16(99).is_none());
        assert!(StatusCode::from_u16(1000).is_none());
        assert_eq!(StatusCode::from_u16(418).unwrap().reason(), "");
    }
}
