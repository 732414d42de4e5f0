//! The management API served over the TCP server: [`ApiService`] adapts
//! `mgmt_api::Server<Api>` (sans-IO HTTP) to `net::Service` (what the TCP server drives).
//! A newtype because neither trait nor type is this crate's (orphan rule).

use alloc::boxed::Box;

use api_tls::{TlsConn, TlsService};
use mgmt_api::{Api, Connection, Limits, Server};

/// A `net::Service` that serves the management API: [`ApiService`] (plain HTTP) or
/// `TlsService<ApiService>` (HTTPS). The main loop reaches the API through it.
pub trait ApiTransport: net::Service {
    /// The HTTP server inside.
    fn server(&self) -> &Server<Api>;
    /// The HTTP server inside, mutable.
    fn server_mut(&mut self) -> &mut Server<Api>;
}

impl ApiTransport for ApiService {
    fn server(&self) -> &Server<Api> {
        &self.server
    }

    fn server_mut(&mut self) -> &mut Server<Api> {
        &mut self.server
    }
}

impl ApiTransport for TlsService<ApiService> {
    fn server(&self) -> &Server<Api> {
        self.inner().server()
    }

    fn server_mut(&mut self) -> &mut Server<Api> {
        self.inner_mut().server_mut()
    }
}

/// `net::Service` over the management API.
pub struct ApiService {
    server: Server<Api>,
}

impl ApiService {
    /// Serves `api` with `limits`.
    pub fn new(api: Api, limits: Limits) -> Self {
        Self {
            server: Server::new(api, limits),
        }
    }
}

impl net::Service for ApiService {
    type Conn = Connection;

    fn open(&mut self, now_ms: u64) -> Connection {
        self.server.open(now_ms)
    }

    fn on_receive(&mut self, conn: &mut Connection, data: &[u8], now_ms: u64) {
        self.server.on_receive(conn, data, now_ms);
    }

    fn output<'c>(&self, conn: &'c Connection) -> &'c [u8] {
        conn.output()
    }

    fn on_sent(&mut self, conn: &mut Connection, n: usize) {
        conn.consume_output(n);
    }

    fn on_peer_closed(&mut self, conn: &mut Connection, now_ms: u64) {
        conn.peer_closed(now_ms);
    }

    fn poll(&mut self, conn: &mut Connection, now_ms: u64) -> net::ConnState {
        match self.server.poll(conn, now_ms) {
            mgmt_api::ConnState::Open => net::ConnState::Open,
            mgmt_api::ConnState::CloseAfterFlush => net::ConnState::CloseAfterFlush,
            mgmt_api::ConnState::Abort => net::ConnState::Abort,
        }
    }

    fn waiting_since(&self, conn: &Connection) -> Option<u64> {
        conn.waiting_since()
    }
}

/// HTTPS on the API port, and plain HTTP answering only the public routes (health) on a
/// second port, for load balancers that cannot speak TLS or hold a token (`api.health_port`).
/// One API serves both.
pub struct HttpsWithHealthPort {
    tls: TlsService<ApiService>,
    health_port: u16,
}

impl HttpsWithHealthPort {
    /// Serves `tls` on every port but `health_port`, which gets public-only plain HTTP.
    pub fn new(tls: TlsService<ApiService>, health_port: u16) -> Self {
        Self { tls, health_port }
    }
}

/// A connection of [`HttpsWithHealthPort`] (boxed either way: rustls's state is large).
pub enum EndpointConn {
    /// On the API port, through TLS.
    Tls(Box<TlsConn<Connection>>),
    /// On the health port: plain HTTP, public routes only.
    Health(Box<Connection>),
}

impl net::Service for HttpsWithHealthPort {
    type Conn = EndpointConn;

    fn open(&mut self, now_ms: u64) -> EndpointConn {
        EndpointConn::Tls(Box::new(self.tls.open(now_ms)))
    }

    fn open_on(&mut self, now_ms: u64, port: u16) -> EndpointConn {
        if port == self.health_port {
            EndpointConn::Health(Box::new(self.tls.inner().server.open_public_only(now_ms)))
        } else {
            self.open(now_ms)
        }
    }

    fn on_receive(&mut self, conn: &mut EndpointConn, data: &[u8], now_ms: u64) {
        match conn {
            EndpointConn::Tls(conn) => self.tls.on_receive(conn, data, now_ms),
            EndpointConn::Health(conn) => self.tls.inner_mut().on_receive(conn, data, now_ms),
        }
    }

    fn output<'c>(&self, conn: &'c EndpointConn) -> &'c [u8] {
        match conn {
            EndpointConn::Tls(conn) => self.tls.output(conn),
            EndpointConn::Health(conn) => conn.output(),
        }
    }

    fn on_sent(&mut self, conn: &mut EndpointConn, n: usize) {
        match conn {
            EndpointConn::Tls(conn) => self.tls.on_sent(conn, n),
            EndpointConn::Health(conn) => conn.consume_output(n),
        }
    }

    fn on_peer_closed(&mut self, conn: &mut EndpointConn, now_ms: u64) {
        match conn {
            EndpointConn::Tls(conn) => self.tls.on_peer_closed(conn, now_ms),
            EndpointConn::Health(conn) => conn.peer_closed(now_ms),
        }
    }

    fn poll(&mut self, conn: &mut EndpointConn, now_ms: u64) -> net::ConnState {
        match conn {
            EndpointConn::Tls(conn) => self.tls.poll(conn, now_ms),
            EndpointConn::Health(conn) => self.tls.inner_mut().poll(conn, now_ms),
        }
    }

    fn waiting_since(&self, conn: &EndpointConn) -> Option<u64> {
        match conn {
            EndpointConn::Tls(conn) => self.tls.waiting_since(conn),
            EndpointConn::Health(conn) => conn.waiting_since(),
        }
    }
}

impl ApiTransport for HttpsWithHealthPort {
    fn server(&self) -> &Server<Api> {
        self.tls.server()
    }

    fn server_mut(&mut self) -> &mut Server<Api> {
        self.tls.server_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::Service;

    fn output_text(service: &ApiService, conn: &Connection) -> alloc::string::String {
        alloc::string::String::from_utf8_lossy(service.output(conn)).into_owned()
    }

    #[test]
    fn serves_health_through_the_service_seam() {
        let mut service = ApiService::new(Api::new(100), Limits::default());
        let mut conn = service.open(100);
        service.on_receive(
            &mut conn,
            b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n",
            150,
        );
        assert_eq!(service.poll(&mut conn, 150), net::ConnState::Open);
        let text = output_text(&service, &conn);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"status\":\"ok\""), "{text}");
        let sent = service.output(&conn).len();
        service.on_sent(&mut conn, sent);
        assert!(service.output(&conn).is_empty());
    }

    #[test]
    fn partial_sends_keep_the_rest_of_the_output() {
        let mut service = ApiService::new(Api::new(0), Limits::default());
        let mut conn = service.open(0);
        service.on_receive(&mut conn, b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n", 1);
        let total = service.output(&conn).len();
        service.on_sent(&mut conn, 5);
        assert_eq!(service.output(&conn).len(), total - 5);
    }

    #[test]
    fn garbage_is_answered_400_and_the_connection_closes() {
        let mut service = ApiService::new(Api::new(0), Limits::default());
        let mut conn = service.open(0);
        service.on_receive(&mut conn, b"\x00\x01 not http\r\n\r\n", 1);
        let text = output_text(&service, &conn);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert_eq!(service.poll(&mut conn, 1), net::ConnState::CloseAfterFlush);
    }

    #[test]
    fn the_health_port_answers_health_in_plain_http_and_nothing_else() {
        let identity = api_tls::TlsIdentity::generate_self_signed(1_800_000_000, 1, &["localhost"])
            .expect("identity");
        let config = api_tls::server_config(&identity, || Some(1_800_000_000)).expect("config");
        let api_service = ApiService::new(Api::new(0), Limits::default());
        let mut service =
            HttpsWithHealthPort::new(TlsService::new(api_service, config, 10_000), 8081);
        let mut health = service.open_on(0, 8081);
        service.on_receive(
            &mut health,
            b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/host HTTP/1.1\r\nHost: a\r\n\r\n",
            1,
        );
        assert_eq!(service.poll(&mut health, 1), net::ConnState::Open);
        let text = alloc::string::String::from_utf8_lossy(service.output(&health)).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("HTTP/1.1 404"), "{text}");
        // The API port speaks TLS: the same bytes get no HTTP answer there.
        let mut api = service.open_on(0, 8080);
        assert!(matches!(api, EndpointConn::Tls(_)));
        service.on_receive(&mut api, b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n", 1);
        let _ = service.poll(&mut api, 1);
        assert!(!service.output(&api).windows(5).any(|w| w == b"HTTP/"));
    }

    #[test]
    fn peer_close_without_a_request_ends_the_connection() {
        let mut service = ApiService::new(Api::new(0), Limits::default());
        let mut conn = service.open(0);
        service.on_peer_closed(&mut conn, 1);
        assert_ne!(service.poll(&mut conn, 1), net::ConnState::Open);
    }
}
