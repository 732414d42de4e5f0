use std::vec;
use std::vec::Vec;

use net::{ConnState, Service};
use proptest::prelude::*;
use rustls::version::{TLS12, TLS13};
use rustls::{CipherSuite, ProtocolVersion};

use super::*;
use crate::testkit::{Client, Echo, Event, client_config, drain, echo_service, identity, pump};

const TIMEOUT_MS: u64 = 10_000;

fn client(versions: &[&'static rustls::SupportedProtocolVersion]) -> Client {
    Client::new(
        client_config(identity().certificate_der(), versions),
        "localhost",
    )
}

/// Full handshake, an echoed request, and a clean close in both directions.
fn handshake_and_echo(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (ProtocolVersion, CipherSuite) {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(100);
    assert!(
        service.inner().events.is_empty(),
        "inner opened before the handshake"
    );
    let mut client = client(versions);
    assert_eq!(
        pump(&mut client, &mut service, &mut conn, 150),
        ConnState::Open
    );
    assert!(client.handshake_done);
    assert!(conn.handshake_complete());
    assert_eq!(service.inner().events, vec![Event::Open(150)]);
    assert_eq!(service.stats().handshakes_completed, 1);

    let request = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    client.write(request);
    pump(&mut client, &mut service, &mut conn, 200);
    assert_eq!(client.plaintext, request);
    assert_eq!(service.stats().bytes_decrypted, request.len() as u64);
    assert_eq!(service.stats().bytes_encrypted, request.len() as u64);

    // close_notify from the client reaches the echo service, which closes: close_notify back.
    client.close();
    let state = pump(&mut client, &mut service, &mut conn, 300);
    assert_eq!(state, ConnState::CloseAfterFlush);
    assert!(service.inner().events.contains(&Event::PeerClosed));
    assert!(client.peer_closed, "no close_notify from the server");
    let negotiated = client.negotiated();
    assert_eq!(conn.protocol_version(), negotiated.0);
    assert_eq!(conn.cipher_suite(), negotiated.1);
    (negotiated.0.expect("version"), negotiated.1.expect("suite"))
}

#[test]
fn tls13_handshake_and_echo() {
    let (version, suite) = handshake_and_echo(&[&TLS13, &TLS12]);
    assert_eq!(version, ProtocolVersion::TLSv1_3);
    // The server's order decides (ChaCha20 first), whatever the client prefers.
    assert_eq!(suite, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
}

#[test]
fn tls12_handshake_and_echo() {
    let (version, suite) = handshake_and_echo(&[&TLS12]);
    assert_eq!(version, ProtocolVersion::TLSv1_2);
    assert_eq!(
        suite,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
}

/// A TLS 1.1 ClientHello (legacy_version 0x0302, no supported_versions extension), as in
/// the feasibility spike.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x09, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let extensions: &[u8] = &[
        0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03, // signature_algorithms
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // supported_groups
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats
    ];
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(extensions);
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn tls11_client_hello_gets_protocol_version_alert() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    service.on_receive(&mut conn, &tls11_client_hello(), 1);
    assert_eq!(service.poll(&mut conn, 2), ConnState::CloseAfterFlush);
    let out = drain(&mut service, &mut conn, 7);
    // alert record, fatal (2), protocol_version (70) (RFC 8446 §6.2).
    assert_eq!(out.first(), Some(&0x15), "{out:02x?}");
    assert!(out.windows(2).any(|w| w == [2, 70]), "{out:02x?}");
    assert_eq!(service.stats().handshakes_failed, 1);
    assert!(service.inner().events.is_empty());
    // Nothing more is accepted or produced.
    service.on_receive(&mut conn, b"more", 3);
    assert!(service.output(&conn).is_empty());
    assert_eq!(service.poll(&mut conn, 4), ConnState::CloseAfterFlush);
    assert_eq!(service.stats().handshakes_failed, 1);
}

#[test]
fn plaintext_http_gets_no_http_answer() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    service.on_receive(
        &mut conn,
        b"GET /v1/health HTTP/1.1\r\nHost: 10.0.2.15\r\n\r\n",
        1,
    );
    let state = service.poll(&mut conn, 2);
    let out = drain(&mut service, &mut conn, usize::MAX);
    assert!(!out.windows(5).any(|w| w == b"HTTP/"), "{out:02x?}");
    assert_ne!(state, ConnState::Open);
    assert_eq!(service.stats().handshakes_failed, 1);
    assert!(service.inner().events.is_empty());
}

#[test]
fn handshake_deadline_aborts_and_is_counted() {
    let mut service = echo_service(1_000);
    let mut conn = service.open(5_000);
    let mut client = client(&[&TLS13]);
    client.process().expect("client");
    // Only the ClientHello arrives; the client never finishes.
    service.on_receive(&mut conn, &client.take_outgoing(), 5_010);
    assert_eq!(service.poll(&mut conn, 5_999), ConnState::Open);
    assert_eq!(service.stats().handshakes_timed_out, 0);
    assert_eq!(service.poll(&mut conn, 6_000), ConnState::Abort);
    assert_eq!(service.stats().handshakes_timed_out, 1);
    assert_eq!(service.poll(&mut conn, 6_001), ConnState::Abort);
    assert_eq!(service.stats().handshakes_timed_out, 1, "counted once");
    assert!(service.inner().events.is_empty());
}

#[test]
fn completed_handshake_has_no_deadline() {
    let mut service = echo_service(1_000);
    let mut conn = service.open(0);
    let mut client = client(&[&TLS13]);
    pump(&mut client, &mut service, &mut conn, 10);
    assert_eq!(service.poll(&mut conn, 1_000_000), ConnState::Open);
    assert_eq!(service.stats().handshakes_timed_out, 0);
}

#[test]
fn waiting_since_before_and_after_handshake() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(42);
    assert_eq!(service.waiting_since(&conn), Some(42));
    let mut client = client(&[&TLS13]);
    client.process().expect("client");
    service.on_receive(&mut conn, &client.take_outgoing(), 50);
    assert_eq!(service.waiting_since(&conn), Some(42), "mid-handshake");
    pump(&mut client, &mut service, &mut conn, 60);
    assert!(conn.handshake_complete());
    // Now the inner service decides.
    assert_eq!(service.waiting_since(&conn), None);
    service.inner_mut().waiting = Some(77);
    assert_eq!(service.waiting_since(&conn), Some(77));
}

#[test]
fn tcp_fin_during_handshake_closes() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    service.on_peer_closed(&mut conn, 1);
    assert_eq!(service.poll(&mut conn, 2), ConnState::CloseAfterFlush);
    assert!(service.inner().events.is_empty());
}

#[test]
fn tcp_fin_after_handshake_reaches_inner_then_close_notify() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    let mut client = client(&[&TLS13]);
    pump(&mut client, &mut service, &mut conn, 1);
    client.write(b"last words");
    client.process().expect("client");
    service.on_receive(&mut conn, &client.take_outgoing(), 2);
    service.on_peer_closed(&mut conn, 3);
    assert_eq!(service.inner().events.last(), Some(&Event::PeerClosed));
    assert_eq!(service.poll(&mut conn, 4), ConnState::CloseAfterFlush);
    client.received(&drain(&mut service, &mut conn, 100));
    client.process().expect("client");
    assert_eq!(client.plaintext, b"last words");
    assert!(client.peer_closed, "close_notify after the echo");
}

#[test]
fn large_output_is_encrypted_in_bounded_steps() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    let mut client = client(&[&TLS13]);
    pump(&mut client, &mut service, &mut conn, 1);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    client.write(&payload);
    client.process().expect("client");
    let wire = client.take_outgoing();
    // Delivered in TCP-sized pieces.
    for piece in wire.chunks(1460) {
        service.on_receive(&mut conn, piece, 2);
        assert!(conn.incoming.len() <= MAX_INCOMING);
        assert!(service.output(&conn).len() < 64 * 1024);
    }
    service.poll(&mut conn, 3);
    // The TCP server takes a little at a time; the buffer stays bounded.
    let mut received = Vec::new();
    loop {
        let out = service.output(&conn);
        assert!(out.len() < 64 * 1024, "outgoing grew to {}", out.len());
        if out.is_empty() {
            break;
        }
        let n = out.len().min(3_000);
        received.extend_from_slice(&out[..n]);
        service.on_sent(&mut conn, n);
    }
    client.received(&received);
    client.process().expect("client");
    assert_eq!(client.plaintext.len(), payload.len());
    assert!(client.plaintext == payload);
    assert_eq!(service.stats().bytes_encrypted, payload.len() as u64);
}

#[test]
fn corrupted_record_after_handshake_sends_alert() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    let mut client = client(&[&TLS13]);
    pump(&mut client, &mut service, &mut conn, 1);
    client.write(b"hello");
    client.process().expect("client");
    let mut wire = client.take_outgoing();
    let last = wire.len() - 1;
    wire[last] ^= 0x80; // breaks the AEAD tag
    service.on_receive(&mut conn, &wire, 2);
    assert_eq!(service.poll(&mut conn, 3), ConnState::CloseAfterFlush);
    assert!(
        !drain(&mut service, &mut conn, usize::MAX).is_empty(),
        "alert"
    );
    assert_eq!(service.stats().connections_failed, 1);
    assert_eq!(service.stats().handshakes_failed, 0);
    assert!(
        !service
            .inner()
            .events
            .iter()
            .any(|e| matches!(e, Event::Receive(_)))
    );
}

#[test]
fn receive_buffer_overflow_aborts() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    // A record header announcing the largest record, then never-ending bytes of it: rustls
    // rejects the oversized length, or the buffer bound trips; either way no Open.
    let mut data = vec![0x16, 0x03, 0x03, 0xff, 0xff];
    data.resize(3 * MAX_RECORD_LEN, 0);
    service.on_receive(&mut conn, &data, 1);
    assert!(conn.incoming.len() <= MAX_INCOMING);
    assert_ne!(service.poll(&mut conn, 2), ConnState::Open);
    assert_eq!(service.stats().handshakes_failed, 1);
}

#[test]
fn inner_greeting_is_sent_after_handshake() {
    let config = crate::server_config(identity(), crate::testkit::clock).expect("config");
    let echo = Echo {
        greeting: b"hello from the inside".to_vec(),
        ..Echo::default()
    };
    let mut service = TlsService::new(echo, config, TIMEOUT_MS);
    let mut conn = service.open(0);
    let mut client = client(&[&TLS12]);
    pump(&mut client, &mut service, &mut conn, 1);
    assert_eq!(client.plaintext, b"hello from the inside");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes (optionally after a genuine ClientHello) in arbitrary chunks, with
    /// polls and partial sends in between: no panic, buffers stay bounded.
    #[test]
    fn arbitrary_input_never_panics(
        genuine_hello in any::<bool>(),
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..12),
        send_sizes in proptest::collection::vec(1usize..5000, 1..8),
        fin in any::<bool>(),
    ) {
        let mut service = echo_service(TIMEOUT_MS);
        let mut conn = service.open(0);
        let mut now = 0;
        if genuine_hello {
            let mut client = client(&[&TLS13, &TLS12]);
            client.process().expect("client");
            service.on_receive(&mut conn, &client.take_outgoing(), now);
        }
        for (index, chunk) in chunks.iter().enumerate() {
            now += 10;
            service.on_receive(&mut conn, chunk, now);
            prop_assert!(conn.incoming.len() <= MAX_INCOMING);
            let _ = service.poll(&mut conn, now);
            let out_len = service.output(&conn).len();
            prop_assert!(out_len < 64 * 1024);
            let n = send_sizes[index % send_sizes.len()].min(out_len);
            service.on_sent(&mut conn, n);
            let _ = service.waiting_since(&conn);
        }
        if fin {
            service.on_peer_closed(&mut conn, now + 1);
        }
        let _ = service.poll(&mut conn, now + TIMEOUT_MS);
        let _ = drain(&mut service, &mut conn, 1000);
        let _ = service.poll(&mut conn, now + 2 * TIMEOUT_MS);
        prop_assert!(service.inner().events.is_empty() || genuine_hello);
    }

    /// After a real handshake: random bytes injected into the record stream never panic.
    #[test]
    fn garbage_after_handshake_never_panics(
        garbage in proptest::collection::vec(any::<u8>(), 1..4000),
    ) {
        let mut service = echo_service(TIMEOUT_MS);
        let mut conn = service.open(0);
        let mut client = client(&[&TLS13]);
        pump(&mut client, &mut service, &mut conn, 1);
        service.on_receive(&mut conn, &garbage, 2);
        let _ = service.poll(&mut conn, 3);
        let out = drain(&mut service, &mut conn, 999);
        prop_assert!(out.len() < 64 * 1024);
    }
}

/// Found by the `tls_api_request` fuzz target: a handshake message split across records
/// (rustls keeps the first part, and how far into the buffer it got) followed by a record
/// rustls refuses. Collecting the alert with the received bytes dropped made rustls slice
/// its buffer out of range (a panic, i.e. a reset of the appliance).
#[test]
fn an_error_inside_a_fragmented_handshake_message_sends_one_alert_and_ends() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    let fragment = [
        0x16, 0x03, 0x01, 0x00, 0x08, // handshake record, 8 bytes
        0x01, 0x00, 0x01, 0xfc, // ClientHello of 508 bytes: only its start follows
        0x03, 0x03, 0x00, 0x00,
    ];
    let refused = [0xff, 0x03, 0x03, 0x00, 0x01, 0x00]; // unknown content type
    service.on_receive(&mut conn, &fragment, 1);
    assert_eq!(service.poll(&mut conn, 1), ConnState::Open);
    service.on_receive(&mut conn, &refused, 2);
    assert_eq!(service.poll(&mut conn, 2), ConnState::CloseAfterFlush);
    let out = service.output(&conn).to_vec();
    assert!(out.first() == Some(&0x15), "an alert record: {out:02x?}");
    assert_eq!(service.stats().handshakes_failed, 1);
    // More input changes nothing.
    service.on_receive(&mut conn, &refused, 3);
    let _ = service.poll(&mut conn, 3);
    assert_eq!(service.stats().handshakes_failed, 1);
}

/// A client that queues its request before the handshake completes sends it in the same
/// flight as its Finished (a browser or rustls's buffered client does): the request must
/// be read at once, not wait for more bytes.
#[test]
fn a_request_arriving_with_the_client_finished_is_served_at_once() {
    let mut service = echo_service(TIMEOUT_MS);
    let mut conn = service.open(0);
    let mut client = client(&[&TLS13]);
    client.write(b"request with the Finished");
    // ClientHello.
    client.process().expect("client");
    service.on_receive(&mut conn, &client.take_outgoing(), 1);
    let _ = service.poll(&mut conn, 1);
    // The server's flight; the client answers with Finished and the request together.
    client.received(&drain(&mut service, &mut conn, usize::MAX));
    client.process().expect("client");
    let second_flight = client.take_outgoing();
    service.on_receive(&mut conn, &second_flight, 2);
    let _ = service.poll(&mut conn, 2);
    // No more bytes from the client: the echo must come anyway.
    for now in 3..6 {
        let _ = service.poll(&mut conn, now);
    }
    client.received(&drain(&mut service, &mut conn, usize::MAX));
    client.process().expect("client");
    assert_eq!(client.plaintext, b"request with the Finished");
}
