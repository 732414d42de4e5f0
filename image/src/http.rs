//! Just enough of an HTTP/1.1 client to check the appliance from the host.
//!
//! Hand-written on purpose: the tests must send deliberately malformed and oversized requests
//! and reuse one connection for several requests, which a full client library hides. Response
//! heads are parsed by `httparse`; bodies are framed by `Content-Length` (or by the end of the
//! connection), which is all the appliance sends.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

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

/// A TCP connection to the appliance that reads responses one by one (keep-alive aware).
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    port: u16,
    pending: Vec<u8>,
}

impl Connection {
    /// Connects to `127.0.0.1:port`, with `timeout` for the connect and for every read/write.
    pub fn open(port: u16, timeout: Duration) -> Result<Self> {
        let net_err = |source| ImageError::Network { port, source };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(net_err)?;
        stream.set_read_timeout(Some(timeout)).map_err(net_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(net_err)?;
        stream.set_nodelay(true).map_err(net_err)?;
        Ok(Self {
            stream,
            port,
            pending: Vec::new(),
        })
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
        if self.stream.set_read_timeout(Some(wait)).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
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
