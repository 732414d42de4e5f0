//! Just enough of an HTTP/1.1 client to check the appliance from the host, over plain TCP or
//! HTTPS.
//!
//! HTTPS: [`pin_certificate`] records, per host port, the SHA-256 fingerprint of the
//! appliance's certificate (the console prints it at every boot; [`crate::qemu`] reads it
//! there and pins it); every [`Connection`] to a pinned port then speaks TLS (rustls over the
//! same pure-Rust provider as the appliance) and accepts exactly that certificate, as an SSH
//! client accepts a known host key. Ports without a pin speak plain HTTP.
//!
//! Hand-written on purpose: the tests must send deliberately malformed and oversized requests
//! and reuse one connection for several requests, which a full client library hides. Response
//! heads are parsed by `httparse`; bodies are framed by `Content-Length` (or by the end of the
//! connection), which is all the appliance sends.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};

/// Most headers a response may carry.
const MAX_HEADERS: usize = 32;
/// Largest response accepted (head and body).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Result of trying to parse a response from the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete response and how many bytes of the input it used.
    Complete(HttpResponse, usize),
    /// More bytes are needed.
    Partial,
}

/// Parses one response from the front of `buf`. `at_eof` says the peer has closed, which ends a
/// body that has no `Content-Length`.
pub fn parse_response(buf: &[u8], at_eof: bool) -> Result<Parsed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => {
            return Err(ImageError::BadResponse(
                "unparseable status line or headers",
            ));
        }
    };
    let status = response
        .code
        .ok_or(ImageError::BadResponse("no status code"))?;
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|header| {
            (
                header.name.to_string(),
                String::from_utf8_lossy(header.value).into_owned(),
            )
        })
        .collect();
    let rest = buf.get(head_len..).unwrap_or_default();
    let content_length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .map_err(|_| ImageError::BadResponse("invalid Content-Length"))?;
    if headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity")
    }) {
        return Err(ImageError::BadResponse("chunked bodies are not supported"));
    }
    // 1xx, 204 and 304 responses have no body, whatever the header fields say (RFC 9112 §6.3).
    let bodiless = status < 200 || status == 204 || status == 304;
    let body_len = match content_length {
        _ if bodiless => 0,
        Some(len) if len > MAX_RESPONSE => {
            return Err(ImageError::BadResponse("body too large"));
        }
        Some(len) if rest.len() >= len => len,
        Some(_) => return Ok(Parsed::Partial),
        None if at_eof => rest.len(),
        None => return Ok(Parsed::Partial),
    };
    let body = rest.get(..body_len).unwrap_or_default().to_vec();
    Ok(Parsed::Complete(
        HttpResponse {
            status,
            headers,
            body,
        },
        head_len + body_len,
    ))
}

/// A SHA-256 certificate fingerprint.
pub type Fingerprint = [u8; 32];

/// Pinned certificate fingerprints by host port.
static PINS: Mutex<Option<HashMap<u16, Fingerprint>>> = Mutex::new(None);

/// From now on, connections to `port` speak TLS and accept only the certificate whose
/// SHA-256 is `fingerprint`.
pub fn pin_certificate(port: u16, fingerprint: Fingerprint) {
    let mut pins = PINS.lock().unwrap_or_else(PoisonError::into_inner);
    pins.get_or_insert_with(HashMap::new)
        .insert(port, fingerprint);
}

/// Connections to `port` speak plain HTTP again.
pub fn unpin_certificate(port: u16) {
    let mut pins = PINS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pins) = pins.as_mut() {
        pins.remove(&port);
    }
}

/// The fingerprint pinned for `port`, if any.
pub fn pinned_certificate(port: u16) -> Option<Fingerprint> {
    let pins = PINS.lock().unwrap_or_else(PoisonError::into_inner);
    pins.as_ref().and_then(|pins| pins.get(&port).copied())
}

/// Parses a fingerprint as the appliance prints it: 32 hex pairs separated by `:`.
pub fn parse_fingerprint(text: &str) -> Option<Fingerprint> {
    let mut out = [0u8; 32];
    let mut parts = text.trim().split(':');
    for byte in &mut out {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint_of(der: &[u8]) -> Fingerprint {
    Sha256::digest(der).into()
}

/// A DER certificate as PEM text (RFC 7468), for `curl --cacert`.
pub fn certificate_pem(der: &[u8]) -> String {
    api_tls::certificate_pem(der)
}

/// Accepts exactly one end-entity certificate, by fingerprint; signatures are checked with
/// the provider's algorithms.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if fingerprint_of(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts exactly the certificate with `fingerprint`.
pub fn pinned_client_config(fingerprint: Fingerprint) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls_rustcrypto::provider());
    let verifier = Arc::new(PinnedCertificate {
        fingerprint,
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| {
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    match config {
        Ok(config) => Arc::new(config),
        // The provider offers TLS 1.2 and 1.3, so the safe defaults always match it.
        Err(e) => panic!("rustls refused its own provider's defaults: {e}"),
    }
}

/// The byte stream under a [`Connection`].
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(stream) => stream.read(buf),
            Self::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(stream) => stream.write(buf),
            Self::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(stream) => stream.flush(),
            Self::Tls(stream) => stream.flush(),
        }
    }
}

/// A connection to the appliance that reads responses one by one (keep-alive aware), over
/// TLS when the port has a pinned certificate.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    port: u16,
    pending: Vec<u8>,
}

impl Connection {
    /// Connects to `127.0.0.1:port`, with `timeout` for the connect and for every read/write
    /// (TLS when [`pin_certificate`] pinned the port; the handshake happens with the first
    /// request).
    pub fn open(port: u16, timeout: Duration) -> Result<Self> {
        match pinned_certificate(port) {
            Some(fingerprint) => Self::open_tls(port, timeout, pinned_client_config(fingerprint)),
            None => Self::open_plain(port, timeout),
        }
    }

    /// A plain TCP connection, whatever is pinned.
    pub fn open_plain(port: u16, timeout: Duration) -> Result<Self> {
        Ok(Self {
            stream: Stream::Plain(tcp(port, timeout)?),
            port,
            pending: Vec::new(),
        })
    }

    /// A TLS connection with `config` (server name `localhost`).
    pub fn open_tls(port: u16, timeout: Duration, config: Arc<ClientConfig>) -> Result<Self> {
        let tcp = tcp(port, timeout)?;
        let name = ServerName::try_from("localhost")
            .map_err(|_| ImageError::BadResponse("server name"))?;
        let tls = ClientConnection::new(config, name)
            .map_err(|_| ImageError::BadResponse("TLS client setup"))?;
        Ok(Self {
            stream: Stream::Tls(Box::new(StreamOwned::new(tls, tcp))),
            port,
            pending: Vec::new(),
        })
    }

    /// Completes the TLS handshake now (it otherwise happens with the first request);
    /// returns the server's certificate chain (DER, end-entity first). Empty for plain TCP.
    pub fn handshake(&mut self) -> Result<Vec<Vec<u8>>> {
        let port = self.port;
        let Stream::Tls(stream) = &mut self.stream else {
            return Ok(Vec::new());
        };
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|source| ImageError::Network { port, source })?;
        }
        Ok(stream
            .conn
            .peer_certificates()
            .map(|chain| chain.iter().map(|cert| cert.to_vec()).collect())
            .unwrap_or_default())
    }

    /// The negotiated TLS version (`"TLSv1.3"`/`"TLSv1.2"`), `None` for plain TCP or before
    /// the handshake.
    pub fn tls_version(&self) -> Option<&'static str> {
        let Stream::Tls(stream) = &self.stream else {
            return None;
        };
        match stream.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
            rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
            _ => Some("other"),
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let port = self.port;
        self.stream
            .write_all(bytes)
            .map_err(|source| ImageError::Network { port, source })
    }

    /// Reads the next complete response.
    pub fn read_response(&mut self) -> Result<HttpResponse> {
        let mut chunk = [0u8; 16 * 1024];
        let mut at_eof = false;
        loop {
            if let Parsed::Complete(response, used) = parse_response(&self.pending, at_eof)? {
                self.pending.drain(..used);
                return Ok(response);
            }
            if at_eof {
                return Err(ImageError::BadResponse(if self.pending.is_empty() {
                    "connection closed without a response"
                } else {
                    "connection closed inside a response"
                }));
            }
            if self.pending.len() > MAX_RESPONSE {
                return Err(ImageError::BadResponse("response too large"));
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|source| ImageError::Network {
                    port: self.port,
                    source,
                })?;
            if n == 0 {
                at_eof = true;
            }
            self.pending
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// Sends `GET path` (keeping the connection open) and reads the response.
    pub fn get(&mut self, path: &str) -> Result<HttpResponse> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.send(request.as_bytes())?;
        self.read_response()
    }

    /// True when the peer has closed its side (a read returns end-of-stream within `wait`).
    pub fn peer_closed(&mut self, wait: Duration) -> bool {
        let tcp = match &self.stream {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => &stream.sock,
        };
        if tcp.set_read_timeout(Some(wait)).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

/// A TCP connection to `127.0.0.1:port` with `timeout` on connect, reads and writes.
fn tcp(port: u16, timeout: Duration) -> Result<TcpStream> {
    let net_err = |source| ImageError::Network { port, source };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(net_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(net_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(net_err)?;
    stream.set_nodelay(true).map_err(net_err)?;
    Ok(stream)
}

/// One `GET path` on a fresh connection that is closed afterwards.
pub fn get(port: u16, path: &str, timeout: Duration) -> Result<HttpResponse> {
    get_with_authorization(port, path, None, timeout)
}

/// Like [`get`], with an `Authorization` header field when `authorization` is given
/// (`"Bearer <token>"`).
pub fn get_with_authorization(
    port: u16,
    path: &str,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let mut connection = Connection::open(port, timeout)?;
    let auth =
        authorization.map_or_else(String::new, |value| format!("Authorization: {value}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    connection.send(request.as_bytes())?;
    connection.read_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_is_base64_in_64_column_lines() {
        let pem = certificate_pem(b"Many hands make light work.");
        assert_eq!(
            pem,
            "-----BEGIN CERTIFICATE-----\nTWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsu\n-----END CERTIFICATE-----\n"
        );
        assert!(certificate_pem(b"ab").contains("\nYWI=\n"));
        assert!(certificate_pem(b"a").contains("\nYQ==\n"));
        let long = certificate_pem(&[0u8; 60]);
        assert!(long.lines().all(|line| line.len() <= 64));
    }

    #[test]
    fn fingerprints_parse_as_the_appliance_prints_them() {
        let text = ["0A"; 32].join(":");
        assert_eq!(parse_fingerprint(&text), Some([0x0a; 32]));
        assert_eq!(parse_fingerprint(&["0A"; 31].join(":")), None);
        assert_eq!(parse_fingerprint(&format!("{text}:0A")), None);
        assert_eq!(parse_fingerprint(&text.replace("0A", "ZZ")), None);
    }

    #[test]
    fn parses_a_response_with_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}extra";
        let Ok(Parsed::Complete(response, used)) = parse_response(raw, false) else {
            panic!("expected a complete response");
        };
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.body, b"{}");
        assert_eq!(used, raw.len() - "extra".len());
    }

    #[test]
    fn incomplete_head_or_body_is_partial() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false).ok(),
            Some(Parsed::Partial)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false).ok(),
            Some(Parsed::Partial)
        );
    }

    #[test]
    fn body_without_length_ends_at_eof() {
        let raw = b"HTTP/1.1 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(raw, false).ok(), Some(Parsed::Partial));
        let Ok(Parsed::Complete(response, _)) = parse_response(raw, true) else {
            panic!("expected a complete response at EOF");
        };
        assert_eq!(response.status, 404);
        assert_eq!(response.body_text(), "nope");
    }

    #[test]
    fn no_content_has_no_body_before_eof() {
        let raw = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        match parse_response(raw, false) {
            Ok(Parsed::Complete(response, used)) => {
                assert_eq!(response.status, 204);
                assert!(response.body.is_empty());
                assert_eq!(used, b"HTTP/1.1 204 No Content\r\n\r\n".len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_bad_lengths_are_errors() {
        assert!(parse_response(b"NOT HTTP AT ALL\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn connection_reads_two_pipelined_responses() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb",
                )
                .expect("write");
        });
        let mut connection = Connection::open(port, Duration::from_secs(5)).expect("connect");
        let first = connection.get("/").expect("first");
        let second = connection.read_response().expect("second");
        assert_eq!((first.status, first.body_text()), (200, "a".to_string()));
        assert_eq!((second.status, second.body_text()), (201, "b".to_string()));
        server.join().expect("server thread");
    }
}
