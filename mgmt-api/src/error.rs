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
    /// 403: the credentials are valid but their role may not make this call.
    Forbidden,
    /// 404: no resource at this path.
    NotFound,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 408: the request did not arrive in time.
    RequestTimeout,
    /// 409: the request conflicts with the resource's current state.
    Conflict,
    /// 409: the name (TD or image) is already used.
    NameTaken,
    /// 409: the image is used by a TD that is not destroyed.
    ImageInUse,
    /// 409: the TD's lifecycle state does not allow the operation.
    InvalidTransition,
    /// 409: the TD is bugged (a host-side invariant broke); only deletion is allowed.
    TdBugged,
    /// 411: a body was announced without `Content-Length`.
    LengthRequired,
    /// 413: the body is larger than the route accepts.
    PayloadTooLarge,
    /// 415: the body's `Content-Type` is not what the route takes.
    UnsupportedMediaType,
    /// 422: the uploaded file is not a usable TDVF image.
    InvalidImage,
    /// 422: a declared workload was given but the host runs the hardware TDX module.
    WorkloadNeedsEmulation,
    /// 422: an `Idempotency-Key` was reused with a different request body.
    IdempotencyKeyReused,
    /// 431: the request head is too large or has too many header fields.
    HeadersTooLarge,
    /// 500: a bug on the server side.
    Internal,
    /// 500: the TDX module answered a status the host did not expect (the host keeps
    /// running; the TD concerned may be marked bugged).
    ModuleError,
    /// 501: a feature of HTTP the server does not implement (e.g. a transfer coding).
    NotImplemented,
    /// 503: the server cannot take this request now.
    Unavailable,
    /// 503: the TD memory pool has no room for this request.
    OutOfMemory,
    /// 503: every TDX private KeyID (HKID) is in use.
    OutOfHkids,
}

impl ErrorCode {
    /// Every code (the OpenAPI document lists the same set).
    pub const ALL: [ErrorCode; 24] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::Conflict,
        Self::NameTaken,
        Self::ImageInUse,
        Self::InvalidTransition,
        Self::TdBugged,
        Self::LengthRequired,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::InvalidImage,
        Self::WorkloadNeedsEmulation,
        Self::IdempotencyKeyReused,
        Self::HeadersTooLarge,
        Self::Internal,
        Self::ModuleError,
        Self::NotImplemented,
        Self::Unavailable,
        Self::OutOfMemory,
        Self::OutOfHkids,
    ];

    /// The wire spelling of the code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::Conflict => "conflict",
            Self::NameTaken => "name_taken",
            Self::ImageInUse => "image_in_use",
            Self::InvalidTransition => "invalid_transition",
            Self::TdBugged => "td_bugged",
            Self::LengthRequired => "length_required",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidImage => "invalid_image",
            Self::WorkloadNeedsEmulation => "workload_needs_emulation",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Internal => "internal",
            Self::ModuleError => "module_error",
            Self::NotImplemented => "not_implemented",
            Self::Unavailable => "unavailable",
            Self::OutOfMemory => "out_of_memory",
            Self::OutOfHkids => "out_of_hkids",
        }
    }

    /// The HTTP status this code is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict
            | Self::NameTaken
            | Self::ImageInUse
            | Self::InvalidTransition
            | Self::TdBugged => StatusCode::CONFLICT,
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidImage | Self::WorkloadNeedsEmulation | Self::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_CONTENT
            }
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Internal | Self::ModuleError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable | Self::OutOfMemory | Self::OutOfHkids => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, alloc::format!("\"{}\"", code.as_str()));
            assert!(code.status().as_u16() >= 400);
        }
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
