//! Fuzzes the TLS record path with the whole management API behind it: the appliance's
//! `api_tls::TlsService` wrapped around a `Server<Api>` over a live software-module host,
//! as the appliance serves it.
//!
//! The input's first byte picks the path:
//! - even: the rest goes, in chunks, straight into the server as raw bytes (TLS records, or
//!   anything): it must never panic, and nothing plaintext-HTTP may come out;
//! - odd: an in-process rustls client completes a real handshake first, then the rest is
//!   sent *as HTTP inside TLS* (as `api_request` sends it in the clear), chunked as the second
//!   byte says; what the client decrypts must be well-formed HTTP/1.1 with JSON errors and no
//!   500, as `api_request` requires.
//!
//! Run it (from `mgmt-api/fuzz`, nightly toolchain):
//!
//! ```text
//! mkdir -p corpus/tls_api_request && cp seeds/tls-* corpus/tls_api_request/
//! cargo +nightly fuzz run tls_api_request corpus/tls_api_request -- -runs=200000
//! ```
#![no_main]

use std::cell::RefCell;
use std::io::Read;
use std::sync::Arc;

use api_tls::{TlsIdentity, TlsService};
use libfuzzer_sys::fuzz_target;
use appliance::service::{ApiService, ApiTransport};
use mgmt_api_fuzz::{ResponseRules, check_responses, pinned_client};
use net::{ConnState, Service};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

struct Fixture {
    service: TlsService<ApiService>,
    client: Arc<rustls::ClientConfig>,
}

thread_local! {
    static FIXTURE: RefCell<Fixture> = RefCell::new(fixture());
}

fn fixture() -> Fixture {
    let (api, limits) = mgmt_api_fuzz::fuzz_api();
    // The client checks the certificate's validity against the host's clock.
    let identity = TlsIdentity::generate_self_signed(unix_now(), 30, &["localhost"])
        .expect("generate an identity");
    let server = api_tls::server_config(&identity, || Some(unix_now())).expect("config");
    Fixture {
        service: TlsService::new(ApiService::new(api, limits), server, 10_000),
        client: pinned_client(identity.certificate_der()),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Moves everything the server wants to send into `client`.
fn server_to_client(
    service: &mut TlsService<ApiService>,
    conn: &mut <TlsService<ApiService> as Service>::Conn,
    client: &mut ClientConnection,
) {
    loop {
        let out = service.output(conn).to_vec();
        if out.is_empty() {
            return;
        }
        service.on_sent(conn, out.len());
        let mut slice = out.as_slice();
        while !slice.is_empty() {
            if client.read_tls(&mut slice).is_err() {
                return;
            }
            if client.process_new_packets().is_err() {
                return;
            }
        }
    }
}

/// Moves everything `client` wants to send into the server.
fn client_to_server(
    service: &mut TlsService<ApiService>,
    conn: &mut <TlsService<ApiService> as Service>::Conn,
    client: &mut ClientConnection,
    now: u64,
) {
    let mut bytes = Vec::new();
    while client.wants_write() {
        if client.write_tls(&mut bytes).is_err() {
            break;
        }
    }
    if !bytes.is_empty() {
        service.on_receive(conn, &bytes, now);
    }
}

fuzz_target!(|input: &[u8]| {
    let [mode, chunk_ctl, data @ ..] = input else {
        return;
    };
    FIXTURE.with(|cell| {
        let fixture = &mut *cell.borrow_mut();
        let service = &mut fixture.service;
        let mut now = 0u64;
        let mut conn = service.open(now);
        if mode & 1 == 0 {
            let mut out = Vec::new();
            for (step, chunk) in data.chunks(1 + usize::from(*chunk_ctl)).enumerate() {
                service.on_receive(&mut conn, chunk, now);
                let state = service.poll(&mut conn, now);
                out.extend_from_slice(service.output(&conn));
                let sent = service.output(&conn).len();
                service.on_sent(&mut conn, sent);
                now += 10 * step as u64;
                if state != ConnState::Open {
                    break;
                }
            }
            assert!(
                !out.windows(5).any(|w| w == b"HTTP/"),
                "plaintext HTTP came out of the TLS port"
            );
            return;
        }
        let name = ServerName::try_from("localhost").expect("name");
        let mut client = ClientConnection::new(fixture.client.clone(), name).expect("client");
        for _ in 0..8 {
            client_to_server(service, &mut conn, &mut client, now);
            let _ = service.poll(&mut conn, now);
            server_to_client(service, &mut conn, &mut client);
            if !client.is_handshaking() {
                break;
            }
        }
        if client.is_handshaking() {
            panic!("the handshake did not complete: {:?}", client.process_new_packets());
        }
        let mut plain = Vec::new();
        let size = 1 + usize::from(*chunk_ctl) % 256;
        for chunk in data.chunks(size) {
            if std::io::Write::write_all(&mut client.writer(), chunk).is_err() {
                break;
            }
            client_to_server(service, &mut conn, &mut client, now);
            let state = service.poll(&mut conn, now);
            service.server_mut().handler_mut().step(now);
            server_to_client(service, &mut conn, &mut client);
            let _ = client.reader().read_to_end(&mut plain);
            now += 100;
            if state != ConnState::Open {
                break;
            }
        }
        service.on_peer_closed(&mut conn, now);
        let _ = service.poll(&mut conn, now + 60_000);
        server_to_client(service, &mut conn, &mut client);
        let _ = client.reader().read_to_end(&mut plain);
        check_responses(
            &plain,
            ResponseRules {
                bare_204: true,
                forbid_500: true,
            },
        );
    });
});
