//! The one error shape of the management API.
//!
//! Every error response the crate produces (framing errors in the connection, 404/405 from
//! the router, validation errors in handlers) is an [`ApiError`] serialised as
//! `{"code": "...", "message": "..."}`, plus a `"field"` member for validation errors that
//! concern one input field.

use alloc::borrow::Cow;
use core::fmt;

use serde::Serialize;

use crate::response::{Response, StatusCode};

/// Machine-readable error code, serialised in `snake_case` (`"bad_request"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the request is malformed (syntax, framing, bad parameter).
    BadRequest,
    /// 401: missing or wrong credentials.
    Unauthorized,
    /// 404: no resource at this path.
    NotFound,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 408: the request did not arrive in time.
    RequestTimeout,
    /// 409: the request conflicts with the resource's current state.
    Conflict,
    /// 411: a body was announced without `Content-Length`.
    LengthRequired,
    /// 413: the body is larger than the route accepts.
    PayloadTooLarge,
    /// 431: the request head is too large or has too many header fields.
    HeadersTooLarge,
    /// 500: a bug on the server side.
    Internal,
    /// 501: a feature of HTTP the server does not implement (e.g. a transfer coding).
    NotImplemented,
    /// 503: the server cannot take this request now.
    Unavailable,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::Conflict => "conflict",
            Self::LengthRequired => "length_required",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Internal => "internal",
            Self::NotImplemented => "not_implemented",
            Self::Unavailable => "unavailable",
        }
    }

    /// The HTTP status this code is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict => StatusCode::CONFLICT,
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered to the client: status + `{"code","message"[,"field"]}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: Cow<'static, str>,
    /// The input field a validation error is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<Cow<'static, str>>,
    /// The HTTP status; defaults to [`ErrorCode::status`].
    #[serde(skip)]
    pub status: StatusCode,
}

impl ApiError {
    /// An error with the code's default status.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            status: code.status(),
        }
    }

    /// Names the input field this error is about (validation errors).
    #[must_use]
    pub fn with_field(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Overrides the HTTP status (e.g. 422 for a validation error).
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The response carrying this error.
    pub fn to_response(&self) -> Response {
        Response::error(self)
    }
}

impl From<ApiError> for Response {
    fn from(err: ApiError) -> Self {
        Response::error(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_code_and_message_and_optional_field() {
        let err = ApiError::bad_request("offset must be a number");
        let json = serde_json::to_string(&err).unwrap();
        assert_eq!(
            json,
            r#"{"code":"bad_request","message":"offset must be a number"}"#
        );
        let json = serde_json::to_string(&err.with_field("offset")).unwrap();
        assert_eq!(
            json,
            r#"{"code":"bad_request","message":"offset must be a number","field":"offset"}"#
        );
    }

    #[test]
    fn serde_spelling_matches_as_str() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::RequestTimeout,
            ErrorCode::Conflict,
            ErrorCode::LengthRequired,
            ErrorCode::PayloadTooLarge,
            ErrorCode::HeadersTooLarge,
            ErrorCode::Internal,
            ErrorCode::NotImplemented,
            ErrorCode::Unavailable,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, alloc::format!("\"{}\"", code.as_str()));
            assert!(code.status().as_u16() >= 400);
        }
    }

    #[test]
    fn status_override_does_not_change_code() {
        let err = ApiError::bad_request("x").with_status(StatusCode::UNPROCESSABLE_CONTENT);
        assert_eq!(err.status.as_u16(), 422);
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(err.to_response().status.as_u16(), 422);
    }
}
