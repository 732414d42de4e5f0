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
