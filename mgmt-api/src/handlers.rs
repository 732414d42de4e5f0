//! The endpoint functions of [`crate::api::ROUTES`] and the one mapping of runtime errors
//! ([`HostError`]) to HTTP statuses and error codes.
//!
//! | `HostError`              | status | code                       |
//! |--------------------------|--------|----------------------------|
//! | `TdNotFound`             | 404    | `not_found`                |
//! | `ImageNotFound`          | 404    | `not_found` (`field: image` on create) |
//! | `UploadNotFound`         | 404    | `not_found`                |
//! | `NameTaken`              | 409    | `name_taken`               |
//! | `ImageInUse`             | 409    | `image_in_use`             |
//! | `InvalidTransition`      | 409    | `invalid_transition`       |
//! | `TdBugged`               | 409    | `td_bugged`                |
//! | `InvalidSpec`            | 400    | `bad_request` + `field`    |
//! | `UploadSizeMismatch`     | 400    | `bad_request`              |
//! | `ImageTooLarge`          | 413    | `payload_too_large`        |
//! | `InvalidImage`           | 422    | `invalid_image` (TDVF reason in the message) |
//! | `WorkloadNeedsEmulation` | 422    | `workload_needs_emulation` + `field: workload` |
//! | `OutOfMemory`            | 503    | `out_of_memory`            |
//! | `OutOfHkids`             | 503    | `out_of_hkids`             |
//! | `Module`                 | 500    | `module_error`             |

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;
use tdx_runtime::host::{HostError, TdId, Transition};

use crate::dto::{
    self, BringupStepDto, CreateTdRequest, EventDto, EventsDto, ImageDto, MeasurementDto,
    StartRequest, StopRequest, TdDto, TdxHostDto,
};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{self, Exposition, MetricType};
use crate::response::{CONTENT_TYPE_JSON, Response, StatusCode};
use crate::server::Reply;
use crate::state::{
    Api, Health, IdempotentCreate, InFlight, MAX_IDEMPOTENCY_KEY_LEN, RouteCall, TlsInfo,
};

/// The OpenAPI 3.1 document served at `GET /v1/openapi.json` (kept in the repository as
/// `mgmt-api/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Header carrying the console offset to ask for next.
pub const CONSOLE_NEXT_OFFSET: &str = "X-Console-Next-Offset";
/// Header carrying the console offset of the first byte returned.
pub const CONSOLE_OFFSET: &str = "X-Console-Offset";
/// Header marking a `POST /v1/tds` answered from the idempotency memory.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

type RouteResult = Result<Reply, ApiError>;

fn ready(resp: Response) -> RouteResult {
    Ok(Reply::Ready(resp))
}

/// The API error answering a runtime error (see the module docs' table).
pub fn host_error(err: HostError) -> ApiError {
    match err {
        HostError::TdNotFound(id) => ApiError::not_found(format!("no TD with id {}", id.0)),
        HostError::ImageNotFound => ApiError::not_found("no image with this name"),
        HostError::UploadNotFound => ApiError::not_found("the image upload is not in progress"),
        HostError::NameTaken => ApiError::new(ErrorCode::NameTaken, "the name is already used"),
        HostError::ImageInUse => ApiError::new(
            ErrorCode::ImageInUse,
            "the image is used by a TD; delete the TD first",
        ),
        HostError::InvalidTransition { from, action } => ApiError::new(
            ErrorCode::InvalidTransition,
            format!("cannot {action} a TD in state {}", from.name()),
        ),
        HostError::InvalidSpec { field, reason } => {
            ApiError::bad_request(format!("invalid {field}: {reason}")).with_field(field)
        }
        HostError::InvalidImage(reason) => ApiError::new(
            ErrorCode::InvalidImage,
            format!("not a TDVF image, a Linux kernel or an initramfs (as TDVF: {reason})"),
        ),
        HostError::InvalidKernel(reason) => ApiError::new(
            ErrorCode::InvalidImage,
            format!("not a bootable Linux kernel: {reason}"),
        ),
        HostError::ImageTooLarge => ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the image is larger than the host accepts",
        ),
        HostError::UploadSizeMismatch => {
            ApiError::bad_request("the body length does not match Content-Length")
        }
        HostError::OutOfMemory => ApiError::new(
            ErrorCode::OutOfMemory,
            "the TD memory pool is exhausted; delete TDs or images and retry",
        ),
        HostError::OutOfHkids => ApiError::new(
            ErrorCode::OutOfHkids,
            "every TDX private KeyID is in use; delete a TD and retry",
        ),
        HostError::WorkloadNeedsEmulation => ApiError::new(
            ErrorCode::WorkloadNeedsEmulation,
            "a declared workload needs the emulated TDX module; this host runs the hardware module",
        )
        .with_field("workload"),
        HostError::TdBugged(id) => ApiError::new(
            ErrorCode::TdBugged,
            format!("TD {} is bugged; it can only be deleted", id.0),
        ),
        HostError::Module(err) => ApiError::new(
            ErrorCode::ModuleError,
            format!("unexpected TDX module status: {err}"),
        ),
        HostError::ModuleUnsupported(_) => ApiError::new(ErrorCode::ModuleError, err.to_string()),
    }
}

fn td_id(call: &RouteCall<'_, '_>) -> Result<TdId, ApiError> {
    let text = call.param("id");
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::not_found(format!(
            "no TD with id {text:?} (ids are decimal numbers)"
        )));
    }
    text.parse()
        .map(TdId)
        .map_err(|_| ApiError::not_found("no TD with this id"))
}

/// `GET /v1/health`.
pub fn health(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    ready(Response::json(
        StatusCode::OK,
        &Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: call.now_ms.saturating_sub(api.start_ms),
            module_kind: api.host.as_ref().map(|h| h.module_kind().as_str()),
            tls: api.setup.tls.clone(),
        },
    ))
}

/// Body of `GET /v1/host`.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport<'a> {
    /// This crate's version.
    pub version: &'static str,
    /// Milliseconds since the API started.
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
    /// The API's TLS certificate, `null` when the port serves plain HTTP.
    pub tls: Option<&'a TlsInfo>,
    /// The TDX module, CPUs, memory, HKIDs and TDs; `null` while there is no host.
    pub tdx: Option<TdxHostDto>,
    /// Why there is no host (bring-up failure), `null` otherwise.
    pub tdx_failure: Option<&'a str>,
    /// The bring-up steps with their results, also after a failed bring-up; empty before
    /// bring-up ran.
    pub bringup: Vec<BringupStepDto<'a>>,
}

/// `GET /v1/host`.
pub fn host(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let setup = &api.setup;
    ready(Response::json(
        StatusCode::OK,
        &HostReport {
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: call.now_ms.saturating_sub(api.start_ms),
            ipv4: setup.ipv4.as_deref(),
            network: setup.network,
            api_port: setup.api_port,
            config_source: &setup.config_source,
            token_source: setup.token_source,
            tls: setup.tls.as_ref(),
            tdx: api.host.as_ref().map(|h| TdxHostDto::from(&h.info())),
            tdx_failure: api.host_failure.as_deref(),
            bringup: api
                .host
                .as_ref()
                .map_or(&api.failed_bringup[..], |h| h.bringup_steps())
                .iter()
                .map(BringupStepDto::from)
                .collect(),
        },
    ))
}

/// `{"items": [...]}` list bodies.
#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
}

/// `GET /v1/images`.
pub fn list_images(api: &mut Api, _call: &RouteCall<'_, '_>) -> RouteResult {
    let items: Vec<ImageDto> = api
        .require_host()?
        .images()
        .iter()
        .map(ImageDto::from)
        .collect();
    ready(Response::json(StatusCode::OK, &Items { items }))
}

/// `GET /v1/images/{name}`.
pub fn get_image(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let image = api
        .require_host()?
        .image(call.param("name"))
        .map_err(host_error)?;
    ready(Response::json(StatusCode::OK, &ImageDto::from(&image)))
}

/// `DELETE /v1/images/{name}`.
pub fn delete_image(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    api.require_host()?
        .delete_image(call.param("name"))
        .map_err(host_error)?;
    ready(Response::new(StatusCode::NO_CONTENT))
}

/// `GET /v1/tds`.
pub fn list_tds(api: &mut Api, _call: &RouteCall<'_, '_>) -> RouteResult {
    let items: Vec<TdDto> = api.require_host()?.tds().iter().map(TdDto::from).collect();
    ready(Response::json(StatusCode::OK, &Items { items }))
}

fn idempotency_key(call: &RouteCall<'_, '_>) -> Result<Option<String>, ApiError> {
    let Some(raw) = call.req.header_bytes("idempotency-key") else {
        return Ok(None);
    };
    let key = raw.trim_ascii();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        ))
        .with_field("Idempotency-Key"));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

fn td_created(td: &tdx_runtime::host::TdInfo, replayed: bool) -> Response {
    let resp = Response::json(StatusCode::CREATED, &TdDto::from(td))
        .with_header("Location", format!("/v1/tds/{}", td.id.0));
    if replayed {
        resp.with_header(IDEMPOTENT_REPLAYED, "true")
    } else {
        resp
    }
}

/// `POST /v1/tds`: 201 with the TD (its build runs in [`Api::step`]). With an
/// `Idempotency-Key` already used for the same body, 201 with the same TD and
/// `Idempotent-Replayed: true`; for a different body, 422 `idempotency_key_reused`.
pub fn create_td(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let key = idempotency_key(call)?;
    let spec =
        dto::parse_strict_json::<CreateTdRequest>(call.body, dto::CREATE_TD_ARRAYS)?.into_spec()?;
    let remembered = key
        .as_deref()
        .and_then(|key| api.idempotency.find(key))
        .map(|entry| (entry.spec == spec, entry.td));
    let host = api.require_host()?;
    match remembered {
        Some((true, id)) => {
            let td = host.td(id).map_err(|_| {
                ApiError::not_found(format!(
                    "the TD created with this Idempotency-Key (id {}) no longer exists",
                    id.0
                ))
            })?;
            return ready(td_created(&td, true));
        }
        Some((false, _)) => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used for a different request body",
            )
            .with_field("Idempotency-Key"));
        }
        None => {}
    }
    let remembered_spec = key.is_some().then(|| spec.clone());
    let td = host.create_td(spec, call.now_ms).map_err(|err| match err {
        HostError::NameTaken => host_error(err).with_field("name"),
        HostError::ImageNotFound => {
            ApiError::not_found("no image with this name").with_field("image")
        }
        other => host_error(other),
    })?;
    if let (Some(key), Some(spec)) = (key, remembered_spec) {
        api.idempotency.remember(IdempotentCreate {
            key,
            spec,
            td: td.id,
        });
    }
    ready(td_created(&td, false))
}

/// `GET /v1/tds/{id}`.
pub fn get_td(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let id = td_id(call)?;
    let td = api.require_host()?.td(id).map_err(host_error)?;
    ready(Response::json(StatusCode::OK, &TdDto::from(&td)))
}

/// Answers a lifecycle request with the TD's current resource: 202 when the operation was
/// started, 200 when the TD was already there.
fn transition_reply(api: &mut Api, id: TdId, transition: Transition) -> RouteResult {
    let status = match transition {
        Transition::Started => StatusCode::ACCEPTED,
        Transition::AlreadyDone => StatusCode::OK,
    };
    let td = api.require_host()?.td(id).map_err(host_error)?;
    ready(Response::json(status, &TdDto::from(&td)))
}

/// `POST /v1/tds/{id}/start`: 202 while starting, 200 if running, 409 otherwise.
pub fn start_td(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let id = td_id(call)?;
    if !call.body.is_empty() {
        dto::parse_strict_json::<StartRequest>(call.body, &[])?;
    }
    let transition = api
        .require_host()?
        .start_td(id, call.now_ms)
        .map_err(host_error)?;
    transition_reply(api, id, transition)
}

/// `POST /v1/tds/{id}/stop`: 202 while stopping, 200 if stopped, 409 otherwise.
pub fn stop_td(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let id = td_id(call)?;
    let request = if call.body.is_empty() {
        StopRequest::default()
    } else {
        dto::parse_strict_json::<StopRequest>(call.body, &[])?
    };
    let mode = request.into_mode()?;
    let transition = api
        .require_host()?
        .stop_td(id, mode, call.now_ms)
        .map_err(host_error)?;
    transition_reply(api, id, transition)
}

/// `DELETE /v1/tds/{id}`: 202 with the TD while teardown runs, 204 once it is gone.
pub fn delete_td(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let id = td_id(call)?;
    let host = api.require_host()?;
    host.destroy_td(id, call.now_ms).map_err(host_error)?;
    match host.td(id) {
        Ok(td) => ready(Response::json(StatusCode::ACCEPTED, &TdDto::from(&td))),
        Err(_) => ready(Response::new(StatusCode::NO_CONTENT)),
    }
}

/// `GET /v1/tds/{id}/measurement`.
pub fn measurement(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let id = td_id(call)?;
    let m = api.require_host()?.measurement(id).map_err(host_error)?;
    ready(Response::json(
        StatusCode::OK,
        &MeasurementDto::new(id.0, &m),
    ))
}

/// `GET /v1/tds/{id}/console?offset=N&max_bytes=M`: text, offsets in headers.
pub fn console(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let id = td_id(call)?;
    let query = call.query()?;
    let offset = query.get_u64("offset")?.unwrap_or(0);
    let cap = api.config.max_console_bytes;
    let max = query
        .get_u64("max_bytes")?
        .map_or(cap, |m| usize::try_from(m).unwrap_or(usize::MAX).min(cap));
    let chunk = api
        .require_host()?
        .console(id, offset, max)
        .map_err(host_error)?;
    ready(
        Response::text(StatusCode::OK, dto::console_text(&chunk))
            .with_header(CONSOLE_OFFSET, chunk.offset.to_string())
            .with_header(CONSOLE_NEXT_OFFSET, chunk.next_offset.to_string()),
    )
}

/// `POST /v1/tds/{id}/console`: types `input` into a running TD's consoles (the UART, and a
/// Linux TD's virtio console); 200 with how many bytes were taken, 409 when the TD is not
/// running.
pub fn type_console(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let id = td_id(call)?;
    let request = dto::parse_strict_json::<dto::ConsoleInput>(call.body, &[])?;
    let accepted_bytes = api
        .require_host()?
        .type_console(id, request.bytes()?)
        .map_err(host_error)?;
    ready(Response::json(
        StatusCode::OK,
        &dto::ConsoleInputAccepted { accepted_bytes },
    ))
}

/// The events body for `since` (used at once and when a long poll completes).
pub(crate) fn events_reply(api: &mut Api, since: u64, limit: usize) -> Result<Response, ApiError> {
    let host = api.require_host()?;
    let events: Vec<EventDto> = host
        .events_since(since, limit)
        .iter()
        .map(EventDto::from)
        .collect();
    let next_since = events.last().map_or(since, |e| e.id);
    Ok(Response::json(
        StatusCode::OK,
        &EventsDto {
            events,
            next_since,
            last_event_id: host.last_event_id(),
        },
    ))
}

/// `GET /v1/events?since=N&wait_ms=M&limit=L`: events with `id > since`; when there are
/// none and `wait_ms > 0`, waits (long poll, capped at [`crate::state::ApiConfig::max_event_wait_ms`])
/// until one exists.
pub fn events(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let query = call.query()?;
    let since = query.get_u64("since")?.unwrap_or(0);
    let wait_ms = query
        .get_u64("wait_ms")?
        .unwrap_or(0)
        .min(api.config.max_event_wait_ms);
    let max = api.config.max_events_per_reply;
    let limit = match query.get_u64("limit")? {
        Some(0) => {
            return Err(ApiError::bad_request("limit must be at least 1").with_field("limit"));
        }
        Some(l) => usize::try_from(l).unwrap_or(usize::MAX).min(max),
        None => max,
    };
    let has_events = api.require_host()?.last_event_id() > since;
    if has_events || wait_ms == 0 {
        return events_reply(api, since, limit).map(Reply::Ready);
    }
    api.in_flight.insert(
        call.req.id(),
        InFlight::EventsPoll {
            route: call.route,
            since,
            limit,
            deadline_ms: call.now_ms.saturating_add(wait_ms),
        },
    );
    Ok(Reply::Later)
}

/// Milliseconds shown as seconds with three decimals.
struct Seconds(u64);

impl core::fmt::Display for Seconds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// `GET /v1/metrics`: Prometheus text format 0.0.4.
pub fn metrics(api: &mut Api, call: &RouteCall<'_, '_>) -> RouteResult {
    let mut doc = Exposition::new();
    let uptime = Seconds(call.now_ms.saturating_sub(api.start_ms));
    doc.family(
        "tdx_uptime_seconds",
        MetricType::Gauge,
        "Seconds since the management API started.",
    )
    .sample("tdx_uptime_seconds", &[], uptime);
    api.http.write(&mut doc);
    if let Some(host) = api.host.as_ref() {
        write_host_metrics(&mut doc, host);
    }
    ready(
        Response::new(StatusCode::OK)
            .with_header("Content-Type", metrics::CONTENT_TYPE)
            .with_body(doc.finish().into_bytes()),
    )
}

fn write_host_metrics(doc: &mut Exposition, host: &tdx_runtime::host::Host) {
    let info = host.info();
    let m = host.metrics();
    let tds = host.tds();

    doc.family("tdx_tds", MetricType::Gauge, "TDs by lifecycle state.");
    for (state, count) in &info.tds_by_state {
        doc.sample("tdx_tds", &[("state", state.name())], count);
    }
    doc.family(
        "tdx_faults_total",
        MetricType::Counter,
        "Private-memory faults resolved by the S-EPT manager, all TDs.",
    )
    .sample("tdx_faults_total", &[], m.faults);
    doc.family(
        "tdx_busy_retries_total",
        MetricType::Counter,
        "SEAMCALLs retried after TDX_OPERAND_BUSY, all TDs.",
    )
    .sample("tdx_busy_retries_total", &[], m.busy_retries);
    if let Some(exits) = &m.guest_exits {
        doc.family(
            "tdx_guest_vmexits_total",
            MetricType::Counter,
            "#VMEXITs the software module's guest engine handled, all TDs.",
        )
        .sample("tdx_guest_vmexits_total", &[], exits.exits);
        doc.family(
            "tdx_guest_accepted_bytes_total",
            MetricType::Counter,
            "Bytes the guests' TDG.MEM.PAGE.ACCEPT calls accepted, all TDs.",
        )
        .sample("tdx_guest_accepted_bytes_total", &[], exits.accepted_bytes);
        doc.family(
            "tdx_guest_accept_nanoseconds_total",
            MetricType::Counter,
            "Time those accepts took as the guests saw it: from the TDCALL's first exit (through the host's PAGE.AUG when the page was missing) to its completion, all TDs.",
        )
        .sample("tdx_guest_accept_nanoseconds_total", &[], exits.accept_ns);
        if let Some(median) = exits.median_overhead_ns() {
            doc.family(
                "tdx_guest_exit_overhead_median_ns",
                MetricType::Gauge,
                "Median time a guest-engine exit keeps the vCPU out of the guest besides the world switch (module and host; halts excluded); 100 ns resolution below 4 us, 1 us above, 27000 meaning longer.",
            )
            .sample("tdx_guest_exit_overhead_median_ns", &[], median);
        }
    }
    doc.family(
        "tdx_leaked_pages",
        MetricType::Gauge,
        "Pages deliberately leaked after unrecoverable errors (live and destroyed TDs).",
    )
    .sample("tdx_leaked_pages", &[], m.leaked_pages);
    doc.family(
        "tdx_seamcalls_total",
        MetricType::Counter,
        "SEAMCALLs by leaf and status class (success, busy, error).",
    );
    for (leaf, class, count) in &m.seamcalls {
        doc.sample(
            "tdx_seamcalls_total",
            &[("leaf", leaf), ("class", class)],
            count,
        );
    }
    doc.family(
        "tdx_pool_bytes",
        MetricType::Gauge,
        "TD memory pool bytes in use, by use.",
    );
    for (usage, bytes) in &m.pool_bytes_by_use {
        doc.sample("tdx_pool_bytes", &[("use", usage)], bytes);
    }
    doc.family(
        "tdx_pool_total_bytes",
        MetricType::Gauge,
        "TD memory pool size in bytes.",
    )
    .sample("tdx_pool_total_bytes", &[], m.pool_total);
    doc.family(
        "tdx_pool_free_bytes",
        MetricType::Gauge,
        "TD memory pool free bytes.",
    )
    .sample("tdx_pool_free_bytes", &[], m.pool_free);
    doc.family(
        "tdx_hkids_total",
        MetricType::Gauge,
        "TDX private KeyIDs usable by TDs.",
    )
    .sample("tdx_hkids_total", &[], info.hkids_total);
    doc.family(
        "tdx_hkids_free",
        MetricType::Gauge,
        "TDX private KeyIDs free.",
    )
    .sample("tdx_hkids_free", &[], info.hkids_free);

    type Counter = fn(&tdx_runtime::host::TdInfo) -> u64;
    let per_td: [(&str, MetricType, &str, Counter); 10] = [
        (
            "tdx_td_exits_total",
            MetricType::Counter,
            "TD exits handled, all reasons.",
            |t| t.counters.exits,
        ),
        (
            "tdx_td_ept_violations_total",
            MetricType::Counter,
            "EPT-violation exits.",
            |t| t.counters.ept_violations,
        ),
        (
            "tdx_td_faults_total",
            MetricType::Counter,
            "Private faults resolved.",
            |t| t.counters.faults,
        ),
        (
            "tdx_td_busy_retries_total",
            MetricType::Counter,
            "TDX_OPERAND_BUSY retries.",
            |t| t.counters.busy_retries,
        ),
        (
            "tdx_td_conversions_total",
            MetricType::Counter,
            "MapGPA conversions handled.",
            |t| t.counters.conversions,
        ),
        (
            "tdx_td_shared_conversion_bytes_total",
            MetricType::Counter,
            "Bytes of mapped private memory MapGPA converted to shared.",
            |t| t.counters.shared_conversion_bytes,
        ),
        (
            "tdx_td_shared_conversion_nanoseconds_total",
            MetricType::Counter,
            "Time the vCPUs spent out of the TD converting memory to shared (exit to reply).",
            |t| t.counters.shared_conversion_ns,
        ),
        (
            "tdx_td_demotions_total",
            MetricType::Counter,
            "2 MiB pages demoted.",
            |t| t.counters.demotions,
        ),
        (
            "tdx_td_leaked_pages",
            MetricType::Gauge,
            "Pages deliberately leaked after unrecoverable errors.",
            |t| t.counters.leaked_pages,
        ),
        (
            "tdx_td_console_bytes_total",
            MetricType::Counter,
            "Console bytes written by the guest.",
            |t| t.counters.console_bytes,
        ),
    ];
    let ids: Vec<String> = tds.iter().map(|t| t.id.0.to_string()).collect();
    doc.family(
        "tdx_td_info",
        MetricType::Gauge,
        "One series per TD (value 1) naming its image and lifecycle state.",
    );
    for (td, id) in tds.iter().zip(&ids) {
        doc.sample(
            "tdx_td_info",
            &[
                ("id", id),
                ("name", &td.name),
                ("image", &td.image),
                ("state", td.state.name()),
            ],
            1,
        );
    }
    for (name, kind, help, value) in per_td {
        doc.family(name, kind, help);
        for (td, id) in tds.iter().zip(&ids) {
            doc.sample(name, &[("id", id), ("name", &td.name)], value(td));
        }
    }
    doc.family(
        "tdx_td_mapped_pages",
        MetricType::Gauge,
        "Private pages mapped, by page size.",
    );
    for (td, id) in tds.iter().zip(&ids) {
        for (size, count) in [
            ("4k", td.mapped.pages_4k),
            ("2m", td.mapped.pages_2m),
            ("1g", td.mapped.pages_1g),
        ] {
            doc.sample(
                "tdx_td_mapped_pages",
                &[("id", id), ("name", &td.name), ("size", size)],
                count,
            );
        }
    }
}

/// `GET /v1/openapi.json`.
pub fn openapi(_api: &mut Api, _call: &RouteCall<'_, '_>) -> RouteResult {
    ready(
        Response::new(StatusCode::OK)
            .with_header("Content-Type", CONTENT_TYPE_JSON)
            .with_body(OPENAPI_JSON.as_bytes().to_vec()),
    )
}
