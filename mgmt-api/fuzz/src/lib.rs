//! Shared by the mgmt-api fuzz targets: the check that what the server wrote is a sequence
//! of well-formed HTTP/1.1 responses with JSON error bodies.

/// The per-target differences in what [`check_responses`] accepts.
#[derive(Clone, Copy, Debug)]
pub struct ResponseRules {
    /// A 204 may come without Content-Length (its body is empty); otherwise every final
    /// response must carry one.
    pub bare_204: bool,
    /// A 500 is a failure.
    pub forbid_500: bool,
}

/// Panics unless `out` is a sequence of well-formed HTTP/1.1 responses, each final one with
/// a Content-Length (see [`ResponseRules::bare_204`]), whose error bodies (status >= 400)
/// are JSON objects with string `code` and `message`; and, under
/// [`ResponseRules::forbid_500`], none is a 500.
pub fn check_responses(mut out: &[u8], rules: ResponseRules) {
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(out) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("malformed response head: {other:?}"),
        };
        let status = resp.code.expect("status");
        let content_length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .expect("utf8")
                    .parse::<usize>()
                    .expect("number")
            });
        out = &out[len..];
        if status == 100 {
            continue;
        }
        let body_len = match (status, content_length) {
            (204, None) if rules.bare_204 => 0,
            (_, Some(len)) => len,
            (_, None) => panic!("no Content-Length on a {status} response"),
        };
        // A HEAD response announces a length but sends no body.
        if body_len > 0 && (out.is_empty() || out.starts_with(b"HTTP/1.1 ")) {
            continue;
        }
        let body = &out[..body_len];
        out = &out[body_len..];
        if rules.forbid_500 {
            assert_ne!(status, 500, "500: {}", String::from_utf8_lossy(body));
        }
        if status >= 400 {
            let value: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
            let obj = value.as_object().expect("error body is an object");
            assert!(
                obj.get("code").is_some_and(|c| c.is_string()),
                "code: {value}"
            );
            assert!(
                obj.get("message").is_some_and(|m| m.is_string()),
                "message: {value}"
            );
        }
    }
}

/// A rustls client (pure-Rust provider) that trusts exactly the self-signed certificate
/// `certificate_der` as its root.
pub fn pinned_client(certificate_der: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(certificate_der.to_vec()))
        .expect("the certificate is a usable trust anchor");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls_rustcrypto::provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// The API the fuzz targets serve: a live software-module host (images up to 4 MiB), the
/// token `fuzz`, and small HTTP limits so that inputs reach them.
pub fn fuzz_api() -> (mgmt_api::Api, mgmt_api::Limits) {
    let mut config = tdx_runtime::host::testing::small_config();
    config.max_image_bytes = 4 << 20;
    let host = tdx_runtime::host::testing::emulated_host(config);
    let api = mgmt_api::Api::new(0)
        .with_token(mgmt_api::BearerToken::new("fuzz").expect("valid token"))
        .with_host(host);
    let limits = mgmt_api::Limits {
        max_header_bytes: 1024,
        max_body_bytes: 4096,
        max_pipelined: 4,
        ..mgmt_api::Limits::default()
    };
    (api, limits)
}
