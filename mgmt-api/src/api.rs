//! The management API's [`Handler`]: the route table, per-request state and the glue to
//! the TDX runtime façade ([`tdx_runtime::host::Host`]).
//!
//! Routes are data ([`ROUTES`]): method, pattern, [`Access`], the body the route takes
//! ([`BodyKind`]) and its [`Endpoint`]. Everything that can be decided from the request head
//! is decided in [`Handler::admit`], before any body byte is read: unknown paths (404),
//! wrong methods (405), missing or wrong credentials (401, see [`crate::auth`]), a `reader`
//! token on an [`Access::Admin`] route (403), a wrong `Content-Type` (415), an image larger
//! than the configured limit (413). Only [`Access::Public`] routes answer without a token.
//!
//! # Long work never blocks the poll loop
//! Every handler returns at once. Building a TD, a graceful stop and a teardown are jobs the
//! runtime advances in bounded slices in [`tdx_runtime::host::Host::step`]: the appliance main loop
//! calls [`Api::step`] between network polls, so health and every other request keep
//! answering while a large image is being added and measured. Image uploads are streamed
//! into pool memory chunk by chunk ([`Handler::body_chunk`]), never buffered whole, and the
//! events long poll is a deferred reply ([`Reply::Later`]) completed by
//! [`Handler::poll_later`] as soon as an event exists or the wait is over.
//!
//! # Without a host
//! [`Api::new`] starts without a [`Host`] (the appliance serves health while bring-up runs,
//! or after it failed): every TDX route then answers 503 `unavailable` with the reason given
//! to [`Api::set_host_failure`], and health reports `module_kind: null`; `GET /v1/host`
//! lists the bring-up steps given to [`Api::set_host_failure_with_steps`].

use alloc::borrow::Cow;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use tdx_runtime::host::{BringupStep, Host};

use crate::auth::{self, BearerToken, Role, TokenSet};
use crate::error::{ApiError, ErrorCode};
use crate::handlers;
use crate::metrics::{HttpCounters, NO_METHOD, PROTOCOL_ROUTE, UNMATCHED_ROUTE};
use crate::request::{Method, Request};
use crate::response::{Response, StatusCode};
use crate::router::{PathParams, Router};
use crate::server::{Admission, Handler, Reply};
use crate::state::*;

const fn route(
    method: Method,
    pattern: &'static str,
    access: Access,
    body: BodyKind,
    call: RouteFn,
) -> RouteSpec {
    RouteSpec {
        method,
        pattern,
        access,
        body,
        endpoint: Endpoint::Call(call),
    }
}

use Access::{Admin, Public, Reader};
use BodyKind::{Json, None as NoBody, OptionalJson};
use Method::{Delete, Get, Post, Put};

/// The route table (the OpenAPI document lists exactly these; a test checks it).
pub const ROUTES: &[RouteSpec] = &[
    route(Get, "/v1/health", Public, NoBody, handlers::health),
    route(Get, "/v1/host", Reader, NoBody, handlers::host),
    route(Get, "/v1/images", Reader, NoBody, handlers::list_images),
    route(
        Get,
        "/v1/images/{name}",
        Reader,
        NoBody,
        handlers::get_image,
    ),
    RouteSpec {
        method: Put,
        pattern: "/v1/images/{name}",
        access: Admin,
        body: BodyKind::OctetStream,
        endpoint: Endpoint::ImageUpload,
    },
    route(
        Delete,
        "/v1/images/{name}",
        Admin,
        NoBody,
        handlers::delete_image,
    ),
    route(Get, "/v1/tds", Reader, NoBody, handlers::list_tds),
    route(Post, "/v1/tds", Admin, Json, handlers::create_td),
    route(Get, "/v1/tds/{id}", Reader, NoBody, handlers::get_td),
    route(Delete, "/v1/tds/{id}", Admin, NoBody, handlers::delete_td),
    route(
        Post,
        "/v1/tds/{id}/start",
        Admin,
        OptionalJson,
        handlers::start_td,
    ),
    route(
        Post,
        "/v1/tds/{id}/stop",
        Admin,
        OptionalJson,
        handlers::stop_td,
    ),
    route(
        Get,
        "/v1/tds/{id}/measurement",
        Reader,
        NoBody,
        handlers::measurement,
    ),
    route(
        Get,
        "/v1/tds/{id}/console",
        Reader,
        NoBody,
        handlers::console,
    ),
    route(
        Post,
        "/v1/tds/{id}/console",
        Admin,
        Json,
        handlers::type_console,
    ),
    route(Get, "/v1/events", Reader, NoBody, handlers::events),
    route(Get, "/v1/metrics", Reader, NoBody, handlers::metrics),
    route(Get, "/v1/openapi.json", Reader, NoBody, handlers::openapi),
];

impl Api {
    /// The API as started at `start_ms` (the origin of `uptime_ms`), with no token (until
    /// [`Api::with_token`] only public routes answer: it fails closed) and no TDX host
    /// (until [`Api::with_host`] TDX routes answer 503).
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
        let config = ApiConfig::default();
        Self {
            router,
            start_ms,
            tokens: TokenSet::new(),
            setup: HostInfo::default(),
            host: None,
            host_failure: None,
            failed_bringup: Vec::new(),
            idempotency: IdempotencyStore {
                entries: VecDeque::new(),
                capacity: config.idempotency_keys,
            },
            config,
            in_flight: BTreeMap::new(),
            admitted: BTreeMap::new(),
            #[cfg(test)]
            route_lookups: 0,
            http: HttpCounters::default(),
        }
    }

    /// Accepts `token` as an `admin` token (every route); a token already accepted keeps
    /// its role.
    #[must_use]
    pub fn with_token(mut self, token: BearerToken) -> Self {
        // Only a duplicate or a full set refuses it; either way the token is not added.
        let _ = self.tokens.insert(token, Role::Admin);
        self
    }

    /// Accepts exactly `tokens`, each with its role (replacing any accepted before).
    #[must_use]
    pub fn with_tokens(mut self, tokens: TokenSet) -> Self {
        self.tokens = tokens;
        self
    }

    /// Sets what `GET /v1/host` reports about the appliance's setup.
    #[must_use]
    pub fn with_host_info(mut self, host: HostInfo) -> Self {
        self.setup = host;
        self
    }

    /// Serves the TD routes from `host`.
    #[must_use]
    pub fn with_host(mut self, host: Host) -> Self {
        self.host = Some(host);
        self.host_failure = None;
        self.failed_bringup.clear();
        self
    }

    /// Sets the API's own tunables.
    #[must_use]
    pub fn with_config(mut self, config: ApiConfig) -> Self {
        self.idempotency.capacity = config.idempotency_keys;
        self.config = config;
        self
    }

    /// Records why there is no host (bring-up failed): TDX routes answer 503 with it.
    pub fn set_host_failure(&mut self, reason: String) {
        self.host_failure = Some(reason);
    }

    /// Records why there is no host together with the bring-up steps that ran (the failed
    /// one, then those not reached): `GET /v1/host` reports them as `bringup`.
    pub fn set_host_failure_with_steps(&mut self, reason: String, steps: Vec<BringupStep>) {
        self.host_failure = Some(reason);
        self.failed_bringup = steps;
    }

    /// Updates the reported interface address (`a.b.c.d/prefix`), e.g. after a DHCP lease.
    pub fn set_ipv4(&mut self, ipv4: Option<String>) {
        self.setup.ipv4 = ipv4;
    }

    /// What `GET /v1/host` reports about the setup.
    pub fn host_info(&self) -> &HostInfo {
        &self.setup
    }

    /// The TDX host, if one was given.
    pub fn host(&self) -> Option<&Host> {
        self.host.as_ref()
    }

    /// The TDX host, mutably.
    pub fn host_mut(&mut self) -> Option<&mut Host> {
        self.host.as_mut()
    }

    /// The API's tunables.
    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    /// Advances the host's long jobs (TD builds, stop timeouts, teardowns) by one bounded
    /// slice. The appliance main loop calls this between network polls; returns whether
    /// work remains (poll again soon rather than sleep).
    pub fn step(&mut self, now_ms: u64) -> bool {
        self.host.as_mut().is_some_and(|host| host.step(now_ms))
    }

    /// HTTP responses counted for a method, route pattern and status (as in `/v1/metrics`).
    pub fn http_count(&self, method: Method, route: &'static str, status: u16) -> u64 {
        self.http.get(method_label(method), route, status)
    }

    /// Requests whose answer is still in progress (uploads, long polls).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The host, or the 503 that says why there is none.
    pub(crate) fn require_host(&mut self) -> Result<&mut Host, ApiError> {
        match self.host.as_mut() {
            Some(host) => Ok(host),
            None => Err(ApiError::unavailable(match &self.host_failure {
                Some(reason) => Cow::Owned(format!("the TDX host is not available: {reason}")),
                None => Cow::Borrowed("the TDX host is not initialised yet"),
            })),
        }
    }

    fn count(&mut self, method: Method, route: &'static str, status: StatusCode) {
        self.http
            .count(method_label(method), route, status.as_u16());
    }

    /// Counts and returns `resp` for `route`.
    fn finish(&mut self, method: Method, route: &'static str, resp: Response) -> Response {
        self.count(method, route, resp.status);
        resp
    }

    fn admit_upload(
        &mut self,
        req: &Request<'_>,
        spec: &'static RouteSpec,
        params: &PathParams,
    ) -> Result<Admission, ApiError> {
        let size = req.content_length();
        let max = self.config.max_image_bytes;
        if size > max {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("an image of {size} bytes exceeds the limit of {max} bytes"),
            ));
        }
        let name = params.get("name").unwrap_or("");
        let id = self
            .require_host()?
            .begin_image_upload(name, size)
            .map_err(|err| match err {
                tdx_runtime::host::HostError::NameTaken => {
                    handlers::host_error(err).with_field("name")
                }
                other => handlers::host_error(other),
            })?;
        self.in_flight
            .insert(req.id(), InFlight::Upload { route: spec, id });
        Ok(Admission::Stream {
            max_body_bytes: max,
        })
    }
}

/// The `method` label of `tdx_http_requests_total`: the method, `OTHER` for extension
/// methods (so a client cannot create series at will).
fn method_label(method: Method) -> &'static str {
    if method == Method::Other {
        "OTHER"
    } else {
        method.as_str()
    }
}

/// Checks `Content-Length`, `Content-Type` and body presence against what the route takes.
fn check_body(req: &Request<'_>, kind: BodyKind) -> Result<(), ApiError> {
    let len = req.content_length();
    if matches!(kind, BodyKind::Json | BodyKind::OctetStream) && !req.has_content_length() {
        return Err(ApiError::new(
            ErrorCode::LengthRequired,
            "this endpoint needs a body sent with Content-Length",
        ));
    }
    let media_type = req
        .header("content-type")
        .map(|v| v.split(';').next().unwrap_or("").trim());
    let wants = match kind {
        BodyKind::None if len > 0 => {
            return Err(ApiError::bad_request("this endpoint takes no request body"));
        }
        BodyKind::None => return Ok(()),
        BodyKind::OptionalJson if len == 0 => return Ok(()),
        BodyKind::Json | BodyKind::OptionalJson => "application/json",
        BodyKind::OctetStream => "application/octet-stream",
    };
    match media_type {
        Some(found) if found.eq_ignore_ascii_case(wants) => Ok(()),
        Some(found) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type {found:?} is not accepted here; send {wants}"),
        )),
        None => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type is missing; send {wants}"),
        )),
    }
}

impl Api {
    /// The route `req` matches: the one route-table lookup of a request.
    fn lookup(
        &mut self,
        req: &Request<'_>,
    ) -> Result<(&'static RouteSpec, PathParams), crate::router::RouteError> {
        #[cfg(test)]
        {
            self.route_lookups += 1;
        }
        self.router
            .find(req.method(), req.path())
            .map(|found| (*found.value, found.params))
    }
}

impl Handler for Api {
    fn is_public(&mut self, req: &Request<'_>) -> bool {
        self.lookup(req)
            .is_ok_and(|(spec, _)| spec.access == Access::Public)
    }

    fn admit(&mut self, req: &Request<'_>, _now_ms: u64) -> Admission {
        let (spec, params) = match self.lookup(req) {
            Ok(found) => found,
            Err(err) => {
                let resp = err.to_response();
                return Admission::Reject(self.finish(req.method(), UNMATCHED_ROUTE, resp));
            }
        };
        let checked = auth::authorize(req, &self.tokens, spec.access)
            .and_then(|()| check_body(req, spec.body).map_err(|err| err.to_response()));
        let admission = match checked {
            Err(resp) => Err(resp),
            Ok(()) => match spec.endpoint {
                Endpoint::Call(_) => Ok(Admission::Buffer),
                Endpoint::ImageUpload => self
                    .admit_upload(req, spec, &params)
                    .map_err(|err| err.to_response()),
            },
        };
        match admission {
            Ok(Admission::Buffer) => {
                // A request the server ends without answering or abandoning (none should)
                // cannot grow the map: the oldest entries go first beyond the bound.
                while self.admitted.len() >= MAX_ADMITTED {
                    self.admitted.pop_first();
                }
                self.admitted.insert(req.id(), (spec, params));
                Admission::Buffer
            }
            Ok(admission) => admission,
            Err(resp) => Admission::Reject(self.finish(req.method(), spec.pattern, resp)),
        }
    }

    fn handle(&mut self, req: &Request<'_>, body: &[u8], now_ms: u64) -> Response {
        match self.respond(req, body, now_ms) {
            Reply::Ready(resp) => resp,
            Reply::Later => self
                .poll_later(req, now_ms)
                .unwrap_or_else(|| ApiError::internal("response deferred").to_response()),
        }
    }

    fn respond(&mut self, req: &Request<'_>, body: &[u8], now_ms: u64) -> Reply {
        // Admitted requests carry their route; a request answered without admission (a
        // caller driving the handler directly) is looked up here instead.
        let found = match self.admitted.remove(&req.id()) {
            Some(found) => Ok(found),
            None => self.lookup(req),
        };
        let (spec, params) = match found {
            Ok(found) => found,
            Err(err) => {
                let resp = err.to_response();
                return Reply::Ready(self.finish(req.method(), UNMATCHED_ROUTE, resp));
            }
        };
        let Endpoint::Call(function) = spec.endpoint else {
            let resp = ApiError::internal("streamed route answered without its body");
            return Reply::Ready(self.finish(req.method(), spec.pattern, resp.to_response()));
        };
        let call = RouteCall {
            req,
            route: spec,
            params,
            body,
            now_ms,
        };
        match function(self, &call) {
            Ok(Reply::Ready(resp)) => Reply::Ready(self.finish(req.method(), spec.pattern, resp)),
            Ok(Reply::Later) => Reply::Later,
            Err(err) => Reply::Ready(self.finish(req.method(), spec.pattern, err.to_response())),
        }
    }

    fn body_chunk(
        &mut self,
        req: &Request<'_>,
        chunk: &[u8],
        _now_ms: u64,
    ) -> Result<(), Response> {
        let Some(InFlight::Upload { route, id }) = self.in_flight.get(&req.id()) else {
            return Err(ApiError::internal("no upload in progress for this request").to_response());
        };
        let (route, id) = (*route, *id);
        let result = match self.host.as_mut() {
            Some(host) => host.write_image_chunk(id, chunk),
            None => Err(tdx_runtime::host::HostError::UploadNotFound),
        };
        if let Err(err) = result {
            self.in_flight.remove(&req.id());
            if let Some(host) = self.host.as_mut() {
                host.abort_image_upload(id);
            }
            let resp = handlers::host_error(err).to_response();
            return Err(self.finish(req.method(), route.pattern, resp));
        }
        Ok(())
    }

    fn body_end(&mut self, req: &Request<'_>, _now_ms: u64) -> Reply {
        let Some(InFlight::Upload { route, id }) = self.in_flight.remove(&req.id()) else {
            let resp = ApiError::internal("no upload in progress for this request");
            return Reply::Ready(self.finish(req.method(), UNMATCHED_ROUTE, resp.to_response()));
        };
        let resp = match self.host.as_mut() {
            Some(host) => match host.finish_image_upload(id) {
                Ok(image) => {
                    let location = format!("/v1/images/{}", image.name);
                    Response::json(StatusCode::CREATED, &crate::dto::ImageDto::from(&image))
                        .with_header("Location", location)
                }
                Err(err) => {
                    host.abort_image_upload(id);
                    handlers::host_error(err).to_response()
                }
            },
            None => ApiError::unavailable("the TDX host went away").to_response(),
        };
        Reply::Ready(self.finish(req.method(), route.pattern, resp))
    }

    fn poll_later(&mut self, req: &Request<'_>, now_ms: u64) -> Option<Response> {
        let Some(InFlight::EventsPoll {
            route,
            since,
            limit,
            deadline_ms,
        }) = self.in_flight.get(&req.id())
        else {
            let resp = ApiError::internal("no deferred answer for this request");
            return Some(self.finish(req.method(), UNMATCHED_ROUTE, resp.to_response()));
        };
        let (route, since, limit, deadline_ms) = (*route, *since, *limit, *deadline_ms);
        let ready = self
            .host
            .as_ref()
            .is_none_or(|host| host.last_event_id() > since);
        if !ready && now_ms < deadline_ms {
            return None;
        }
        self.in_flight.remove(&req.id());
        let resp =
            handlers::events_reply(self, since, limit).unwrap_or_else(|err| err.to_response());
        Some(self.finish(req.method(), route.pattern, resp))
    }

    fn abandon(&mut self, req: &Request<'_>, _now_ms: u64) {
        self.admitted.remove(&req.id());
        if let Some(InFlight::Upload { id, .. }) = self.in_flight.remove(&req.id())
            && let Some(host) = self.host.as_mut()
        {
            host.abort_image_upload(id);
        }
    }

    fn on_protocol_error(&mut self, req: Option<&Request<'_>>, status: StatusCode, _now_ms: u64) {
        let method = req.map_or(NO_METHOD, |req| method_label(req.method()));
        self.http.count(method, PROTOCOL_ROUTE, status.as_u16());
    }
}
#[cfg(test)]
mod openapi_check;
#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;
