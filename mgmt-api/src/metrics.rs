//! Prometheus text exposition (format 0.0.4) for `GET /v1/metrics`, and the API's own
//! HTTP request counters.
//!
//! The writer is hand-written: the format is a few lines of rules (`# HELP`, `# TYPE`, one
//! sample per line, label values escaped), and the maintained crates for it
//! (`prometheus`, `prometheus-client`) need `std`, which this `no_std` crate cannot use.
//!
//! Rules implemented (Prometheus "Exposition formats", text format 0.0.4):
//! * every family is introduced by `# HELP name text` and `# TYPE name counter|gauge`,
//!   appearing once, before its samples; HELP text escapes `\` and line feed;
//! * label values escape `\`, `"` and line feed; label and metric names are fixed
//!   identifiers chosen in this crate (checked by a unit test);
//! * the document ends with a line feed.

use alloc::collections::BTreeMap;
use alloc::string::String;
use core::fmt::Write;

/// `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Monotonically increasing count.
    Counter,
    /// Value that goes up and down.
    Gauge,
}

impl MetricType {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// Builds an exposition document family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: writes its `# HELP` and `# TYPE` lines. Samples of this family
    /// must follow before the next call.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) -> &mut Self {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push('\n');
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// Writes one sample `name{labels} value`. Label values are escaped.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl core::fmt::Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                push_label_value(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// The finished document.
    pub fn finish(self) -> String {
        self.out
    }
}

fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Route label of requests that matched no route (404, 405, undecodable path).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Route label of responses the connection layer wrote on its own, without a handler
/// answering: unparsable requests and unsupported framing (400, 411, 501, 505), heads too
/// large (431), bodies over the limit (413), timeouts (408), too many pipelined responses
/// (503). Their method label is the request's when its head was parsed, else
/// [`NO_METHOD`].
pub const PROTOCOL_ROUTE: &str = "(protocol)";

/// Method label of a protocol-level response to a request whose head never parsed.
pub const NO_METHOD: &str = "(none)";

/// HTTP requests answered by the API, by method, route pattern (never the raw path, so the
/// number of series is bounded by the route table) and status. Responses the connection
/// layer writes without consulting the handler are counted under [`PROTOCOL_ROUTE`].
#[derive(Debug, Default, Clone)]
pub struct HttpCounters {
    by_route: BTreeMap<(&'static str, &'static str, u16), u64>,
}

impl HttpCounters {
    /// Counts one response.
    pub fn count(&mut self, method: &'static str, route: &'static str, status: u16) {
        *self.by_route.entry((method, route, status)).or_insert(0) += 1;
    }

    /// Responses counted for this method, route and status.
    pub fn get(&self, method: &'static str, route: &'static str, status: u16) -> u64 {
        self.by_route
            .get(&(method, route, status))
            .copied()
            .unwrap_or(0)
    }

    /// Writes the `tdx_http_requests_total` family.
    pub fn write(&self, doc: &mut Exposition) {
        doc.family(
            "tdx_http_requests_total",
            MetricType::Counter,
            "HTTP requests answered by the management API, by method, route pattern and status; \
             route=\"(protocol)\" counts responses the HTTP layer sent on its own, without a \
             route answering (malformed request 400, 408 timeout, 411, 413 body too large, \
             431 head too large, 503 pipeline full), with method=\"(none)\" when the request \
             line never parsed.",
        );
        let mut status_text = String::new();
        for (&(method, route, status), &count) in &self.by_route {
            status_text.clear();
            let _ = write!(status_text, "{status}");
            doc.sample(
                "tdx_http_requests_total",
                &[
                    ("method", method),
                    ("route", route),
                    ("status", &status_text),
                ],
                count,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_and_samples() {
        let mut doc = Exposition::new();
        doc.family("tdx_up", MetricType::Gauge, "Up.")
            .sample("tdx_up", &[], 1);
        doc.family("tdx_x_total", MetricType::Counter, "X by y.")
            .sample("tdx_x_total", &[("y", "a"), ("z", "b")], 7);
        assert_eq!(
            doc.finish(),
            "# HELP tdx_up Up.\n# TYPE tdx_up gauge\ntdx_up 1\n\
             # HELP tdx_x_total X by y.\n# TYPE tdx_x_total counter\n\
             tdx_x_total{y=\"a\",z=\"b\"} 7\n"
        );
    }

    #[test]
    fn escapes_label_values_and_help() {
        let mut doc = Exposition::new();
        doc.family("m", MetricType::Gauge, "a\\b\nc")
            .sample("m", &[("name", "q\"u\\o\nte")], 0);
        let text = doc.finish();
        assert!(text.contains("# HELP m a\\\\b\\nc\n"), "{text}");
        assert!(text.contains("m{name=\"q\\\"u\\\\o\\nte\"} 0\n"), "{text}");
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn http_counters_group_by_route_pattern() {
        let mut counters = HttpCounters::default();
        counters.count("GET", "/v1/tds/{id}", 200);
        counters.count("GET", "/v1/tds/{id}", 200);
        counters.count("GET", "/v1/tds/{id}", 404);
        assert_eq!(counters.get("GET", "/v1/tds/{id}", 200), 2);
        let mut doc = Exposition::new();
        counters.write(&mut doc);
        let text = doc.finish();
        assert!(text.contains(
            "tdx_http_requests_total{method=\"GET\",route=\"/v1/tds/{id}\",status=\"200\"} 2\n"
        ));
        assert!(text.contains("status=\"404\"} 1\n"));
    }
}
