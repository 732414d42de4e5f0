//! The management API's [`Handler`]: the route table and the endpoints.
//!
//! Routes are data ([`ROUTES`]): method, pattern, [`Access`] and a plain function. Unknown
//! paths (404), wrong methods (405) and, on [`Access::Bearer`] routes, missing or wrong
//! credentials (401, see [`crate::auth`]) are refused in [`Handler::admit`], before any body
//! byte is read. Only [`Access::Public`] routes answer without a token.

use alloc::string::String;

use serde::Serialize;

use crate::auth::{self, BearerToken};
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

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health only).
    Public,
    /// Clients presenting the configured bearer token (see [`crate::auth`]).
    Bearer,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// The method (GET also serves HEAD).
    pub method: Method,
    /// The path pattern, `{name}` for parameters.
    pub pattern: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The function answering it.
    pub handler: RouteFn,
}

/// The route table.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/health",
        access: Access::Public,
        handler: health,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/host",
        access: Access::Bearer,
        handler: host,
    },
];

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

/// What the appliance reports about itself in `GET /v1/host`, set by the platform.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// The TCP port the API listens on.
    pub api_port: u16,
    /// How the address is obtained: `"dhcp"` or `"static"`.
    pub network: &'static str,
    /// The interface address as `a.b.c.d/prefix`, if it has one.
    pub ipv4: Option<String>,
    /// Where the configuration came from (file on the boot medium, TFTP, defaults).
    pub config_source: String,
    /// Whether the token was `"configured"` or `"generated"` at boot.
    pub token_source: &'static str,
}

/// Body of `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport<'a> {
    /// This crate's version.
    pub version: &'static str,
    /// Milliseconds since [`Api::new`]'s `start_ms`.
    pub uptime_ms: u64,
    /// The interface address (`a.b.c.d/prefix`), `null` while there is none.
    pub ipv4: Option<&'a str>,
    /// How the address is obtained.
    pub network: &'static str,
    /// The API's TCP port.
    pub api_port: u16,
    /// Where the configuration came from.
    pub config_source: &'a str,
    /// `"configured"` or `"generated"`.
    pub token_source: &'static str,
}

fn host(api: &mut Api, call: &RouteCall<'_, '_>) -> Response {
    let info = &api.host;
    Response::json(
        StatusCode::OK,
        &HostReport {
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: call.now_ms.saturating_sub(api.start_ms),
            ipv4: info.ipv4.as_deref(),
            network: info.network,
            api_port: info.api_port,
            config_source: &info.config_source,
            token_source: info.token_source,
        },
    )
}

/// The management API: router plus endpoint state.
pub struct Api {
    router: Router<&'static RouteSpec>,
    start_ms: u64,
    token: Option<BearerToken>,
    host: HostInfo,
}

impl Api {
    /// The API as started at `start_ms` (the origin of `uptime_ms`), with no token: until
    /// [`Api::with_token`] only public routes answer (it fails closed).
    pub fn new(start_ms: u64) -> Self {
        let mut router = Router::new();
        for spec in ROUTES {
            if let Err(err) = router.add(spec.method, spec.pattern, spec) {
                // Only reachable by editing ROUTES wrongly; a unit test parses every row.
                log::error!(
                    "route {} {} skipped: {err}",
                    spec.method.as_str(),
                    spec.pattern
                );
            }
        }
        Self {
            router,
            start_ms,
            token: None,
            host: HostInfo::default(),
        }
    }

    /// Requires `token` on every non-public route.
    #[must_use]
    pub fn with_token(mut self, token: BearerToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Sets what `GET /v1/host` reports.
    #[must_use]
    pub fn with_host_info(mut self, host: HostInfo) -> Self {
        self.host = host;
        self
    }

    /// Updates the reported interface address (`a.b.c.d/prefix`), e.g. after a DHCP lease.
    pub fn set_ipv4(&mut self, ipv4: Option<String>) {
        self.host.ipv4 = ipv4;
    }

    /// What `GET /v1/host` reports.
    pub fn host_info(&self) -> &HostInfo {
        &self.host
    }
}

impl Handler for Api {
    fn admit(&mut self, req: &Request<'_>, _now_ms: u64) -> Admission {
        match self.router.find(req.method(), req.path()) {
            Ok(route) if route.value.access == Access::Bearer => {
                match auth::authorize(req, self.token.as_ref()) {
                    Ok(()) => Admission::Buffer,
                    Err(refusal) => Admission::Reject(refusal),
                }
            }
            Ok(_) => Admission::Buffer,
            Err(err) => Admission::Reject(err.to_response()),
        }
    }

    fn handle(&mut self, req: &Request<'_>, body: &[u8], now_ms: u64) -> Response {
        let (route, params) = match self.router.find(req.method(), req.path()) {
            Ok(found) => (found.value.handler, found.params),
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

    fn exchange(api: &mut Api, raw: &str) -> Response {
        let head = crate::request::tests_support::head(raw);
        let req = Request::new(&head);
        match api.admit(&req, 10) {
            Admission::Buffer => api.handle(&req, &[], 10),
            Admission::Reject(resp) => resp,
            Admission::Stream { .. } => panic!("no route streams"),
        }
    }

    fn authed_api() -> Api {
        Api::new(0)
            .with_token(BearerToken::new("tok3n").unwrap())
            .with_host_info(HostInfo {
                api_port: 8080,
                network: "static",
                ipv4: Some("10.0.2.15/24".into()),
                config_source: "boot medium \\EFI\\BOOT\\appliance.toml".into(),
                token_source: "configured",
            })
    }

    #[test]
    fn health_needs_no_token() {
        let resp = exchange(
            &mut authed_api(),
            "GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert_eq!(resp.status, StatusCode::OK);
    }

    #[test]
    fn host_needs_the_token_and_reports_the_setup() {
        let mut api = authed_api();
        for auth in ["", "Authorization: Bearer wrong\r\n"] {
            let resp = exchange(
                &mut api,
                &alloc::format!("GET /v1/host HTTP/1.1\r\nHost: h\r\n{auth}\r\n"),
            );
            assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{auth}");
            assert!(resp.header("www-authenticate").is_some());
        }
        let resp = exchange(
            &mut api,
            "GET /v1/host HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer tok3n\r\n\r\n",
        );
        assert_eq!(resp.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["ipv4"], "10.0.2.15/24");
        assert_eq!(v["api_port"], 8080);
        assert_eq!(v["network"], "static");
        assert_eq!(v["token_source"], "configured");
        assert_eq!(v["uptime_ms"], 10);
        api.set_ipv4(None);
        let resp = exchange(
            &mut api,
            "GET /v1/host HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer tok3n\r\n\r\n",
        );
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert!(v["ipv4"].is_null());
    }

    #[test]
    fn routing_errors_come_before_authentication() {
        let mut api = authed_api();
        let resp = exchange(&mut api, "GET /v1/nope HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(resp.status, StatusCode::NOT_FOUND);
        let resp = exchange(&mut api, "DELETE /v1/host HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn without_a_token_protected_routes_always_refuse() {
        let mut api = Api::new(0);
        let resp = exchange(
            &mut api,
            "GET /v1/host HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer x\r\n\r\n",
        );
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    }
}
