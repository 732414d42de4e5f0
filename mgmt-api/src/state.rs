//! The API's state and the types route functions see: the [`Api`] struct (its router, the
//! TDX host it drives, per-request state, counters), what a route function gets
//! ([`RouteCall`]) and what a route is ([`RouteSpec`]). Below both the dispatcher (`api`)
//! and the route functions (`handlers`), so neither depends on the other's module.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;

use alloc::vec::Vec;
use serde::Serialize;
use tdx_runtime::host::{BringupStep, Host, TdId, TdSpec, UploadId};

use crate::auth::TokenSet;
use crate::error::ApiError;
use crate::metrics::HttpCounters;
use crate::request::{Method, Request, RequestId};
use crate::router::{PathParams, Router};
use crate::server::Reply;
use crate::uri::Query;

/// Everything a route function gets about its request.
pub struct RouteCall<'a, 'r> {
    /// The request.
    pub req: &'a Request<'r>,
    /// The route it matched.
    pub route: &'static RouteSpec,
    /// The pattern's path parameters, decoded.
    pub params: PathParams,
    /// The buffered body.
    pub body: &'a [u8],
    /// The time the request completed.
    pub now_ms: u64,
}

impl RouteCall<'_, '_> {
    /// The decoded query string (400 on bad escapes).
    pub fn query(&self) -> Result<Query, ApiError> {
        Query::parse(self.req.query())
    }

    /// Path parameter `name` (routes only ask for parameters their pattern has).
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).unwrap_or("")
    }
}

/// A route's function: a response now, a deferred one, or an error response.
pub type RouteFn = fn(&mut Api, &RouteCall<'_, '_>) -> Result<Reply, ApiError>;

/// What answers a route.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    /// A function called with the buffered body.
    Call(RouteFn),
    /// `PUT /v1/images/{name}`: the body is streamed into the host chunk by chunk.
    ImageUpload,
}

/// The request body a route takes (checked in [`crate::server::Handler::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body: a non-empty one is a 400.
    None,
    /// A JSON body (`Content-Type: application/json`), required.
    Json,
    /// An optional JSON body: empty, or `application/json`.
    OptionalJson,
    /// Raw bytes (`application/octet-stream`), streamed.
    OctetStream,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health only).
    Public,
    /// Clients presenting any configured token, `reader` or `admin` (see [`crate::auth`]).
    /// Only routes that change nothing (GET) are `Reader` routes.
    Reader,
    /// Clients presenting an `admin` token.
    Admin,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// The method (GET also serves HEAD).
    pub method: Method,
    /// The path pattern, `{name}` for parameters (also the `route` label of HTTP metrics).
    pub pattern: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The body it takes.
    pub body: BodyKind,
    /// What answers it.
    pub endpoint: Endpoint,
}

/// What the appliance reports about its setup in `GET /v1/host`, set by the platform.
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
    /// TLS on the API port: `None` when it serves plain HTTP.
    pub tls: Option<TlsInfo>,
}

/// What `GET /v1/health` and `GET /v1/host` say about the API's TLS certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    /// SHA-256 fingerprint of the server certificate, as `openssl x509 -fingerprint
    /// -sha256` prints it (the console prints it at every boot).
    pub fingerprint: String,
    /// `"generated"` (self-signed, made at first boot and kept) or `"configured"`.
    pub certificate_source: &'static str,
}

/// Tunables of the API itself (the runtime has its own `HostConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest image upload accepted (413 beyond). Default 64 MiB.
    pub max_image_bytes: u64,
    /// Longest `wait_ms` of the events long poll; larger values are capped. Default 30 s.
    pub max_event_wait_ms: u64,
    /// Most events in one `GET /v1/events` answer. Default 1000.
    pub max_events_per_reply: usize,
    /// Most console bytes in one `GET /v1/tds/{id}/console` answer. Default 64 KiB.
    pub max_console_bytes: usize,
    /// `Idempotency-Key`s remembered (oldest forgotten first). Default 256.
    pub idempotency_keys: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_image_bytes: 64 * 1024 * 1024,
            max_event_wait_ms: 30_000,
            max_events_per_reply: 1000,
            max_console_bytes: 64 * 1024,
            idempotency_keys: 256,
        }
    }
}

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Admitted requests whose route is remembered at once (far more than connections × the
/// pipelining depth the server allows).
pub(crate) const MAX_ADMITTED: usize = 1024;

/// A remembered `POST /v1/tds` keyed by its `Idempotency-Key`.
#[derive(Debug, Clone)]
pub(crate) struct IdempotentCreate {
    pub key: String,
    pub spec: TdSpec,
    pub td: TdId,
}

/// Bounded memory of idempotent creates (first in, first forgotten).
#[derive(Debug, Default)]
pub(crate) struct IdempotencyStore {
    pub(crate) entries: VecDeque<IdempotentCreate>,
    pub(crate) capacity: usize,
}

impl IdempotencyStore {
    pub fn find(&self, key: &str) -> Option<&IdempotentCreate> {
        self.entries.iter().find(|e| e.key == key)
    }

    pub fn remember(&mut self, entry: IdempotentCreate) {
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }
}

/// A request whose answer is not produced by one route call.
#[derive(Debug)]
pub(crate) enum InFlight {
    /// An image upload streaming into the host.
    Upload {
        route: &'static RouteSpec,
        id: UploadId,
    },
    /// An events long poll.
    EventsPoll {
        route: &'static RouteSpec,
        since: u64,
        limit: usize,
        deadline_ms: u64,
    },
}

/// The management API: router, the TDX host it drives, and per-request state.
pub struct Api {
    pub(crate) router: Router<&'static RouteSpec>,
    pub(crate) start_ms: u64,
    pub(crate) tokens: TokenSet,
    pub(crate) setup: HostInfo,
    pub(crate) host: Option<Host>,
    pub(crate) host_failure: Option<String>,
    /// The steps of a bring-up that failed (a host reports its own).
    pub(crate) failed_bringup: Vec<BringupStep>,
    pub(crate) config: ApiConfig,
    pub(crate) in_flight: BTreeMap<RequestId, InFlight>,
    /// The route each admitted request matched, so that answering it needs no second lookup.
    pub(crate) admitted: BTreeMap<RequestId, (&'static RouteSpec, PathParams)>,
    /// Route-table lookups made (tests check there is one per request).
    #[cfg(test)]
    pub(crate) route_lookups: u64,
    pub(crate) idempotency: IdempotencyStore,
    pub(crate) http: HttpCounters,
}

/// Body of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Always `"ok"` when the API answers.
    pub status: &'static str,
    /// This crate's version.
    pub version: &'static str,
    /// Milliseconds since [`Api::new`]'s `start_ms`.
    pub uptime_ms: u64,
    /// `"hardware"` or `"emulated"`, `null` while there is no TDX host.
    pub module_kind: Option<&'static str>,
    /// The API's TLS certificate, `null` when the port serves plain HTTP.
    pub tls: Option<TlsInfo>,
}
