//! The management API's [`Handler`]: the route table and the endpoints.
//!
//! Routes are data ([`ROUTES`]): method, pattern and a plain function. Unknown paths and
//! wrong methods are refused in [`Handler::admit`], before any body byte is read.

use serde::Serialize;

use crate::request::{Method, Request};
use crate::response::{Response, StatusCode};
use crate::router::{PathParams, Router};
use crate::server::{Admission, Handler};
use crate::uri::Query;

/// Everything a route function gets about its request.
pub struct RouteCall<'a, 'r> {
    /// The request.
    pub req: &'a Request<'r>,
    /// The pattern's path parameters, decoded.
    pub params: PathParams,
    /// The buffered body.
    pub body: &'a [u8],
    /// The time the request completed.
    pub now_ms: u64,
}

impl RouteCall<'_, '_> {
    /// The decoded query string (400 on bad escapes).
    pub fn query(&self) -> Result<Query, crate::ApiError> {
        Query::parse(self.req.query())
    }
}

/// A route's function.
pub type RouteFn = fn(&mut Api, &RouteCall<'_, '_>) -> Response;

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// The method (GET also serves HEAD).
    pub method: Method,
    /// The path pattern, `{name}` for parameters.
    pub pattern: &'static str,
    /// The function answering it.
    pub handler: RouteFn,
}

/// The route table.
pub const ROUTES: &[RouteSpec] = &[RouteSpec {
    method: Method::Get,
    pattern: "/v1/health",
    handler: health,
}];

/// Body of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Always `"ok"` when the API answers.
    pub status: &'static str,
    /// This crate's version.
    pub version: &'static str,
    /// Milliseconds since [`Api::new`]'s `start_ms`.
    pub uptime_ms: u64,
}

fn health(api: &mut Api, call: &RouteCall<'_, '_>) -> Response {
    Response::json(
        StatusCode::OK,
        &Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: call.now_ms.saturating_sub(api.start_ms),
        },
    )
}

/// The management API: router plus endpoint state.
pub struct Api {
    router: Router<RouteFn>,
    start_ms: u64,
}

impl Api {
    /// The API as started at `start_ms` (the origin of `uptime_ms`).
    pub fn new(start_ms: u64) -> Self {
        let mut router = Router::new();
        for spec in ROUTES {
            if let Err(err) = router.add(spec.method, spec.pattern, spec.handler) {
                // Only reachable by editing ROUTES wrongly; a unit test parses every row.
                log::error!(
                    "route {} {} skipped: {err}",
                    spec.method.as_str(),
                    spec.pattern
                );
            }
        }
        Self { router, start_ms }
    }
}

impl Handler for Api {
    fn admit(&mut self, req: &Request<'_>, _now_ms: u64) -> Admission {
        match self.router.find(req.method(), req.path()) {
            Ok(_) => Admission::Buffer,
            Err(err) => Admission::Reject(err.to_response()),
        }
    }

    fn handle(&mut self, req: &Request<'_>, body: &[u8], now_ms: u64) -> Response {
        let (route, params) = match self.router.find(req.method(), req.path()) {
            Ok(found) => (*found.value, found.params),
            Err(err) => return err.to_response(),
        };
        let call = RouteCall {
            req,
            params,
            body,
            now_ms,
        };
        route(self, &call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::PathPattern;

    #[test]
    fn every_route_pattern_parses() {
        for spec in ROUTES {
            PathPattern::parse(spec.pattern).unwrap();
        }
    }

    #[test]
    fn health_body_reports_version_and_uptime() {
        let mut api = Api::new(1_000);
        let head =
            crate::request::tests_support::head("GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n");
        let resp = api.handle(&Request::new(&head), &[], 3_500);
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["uptime_ms"], 2_500);
    }
}
