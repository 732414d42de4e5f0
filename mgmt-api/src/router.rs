//! Method + path routing with `{name}` path parameters; the route table is data.
//!
//! A [`Router`] holds `(method, pattern, value)` entries; [`Router::find`] decodes the
//! request path segment by segment (so `%2F` stays inside a segment) and answers with the
//! matching value and its parameters, or a [`RouteError`] that becomes a 404, a 405 with an
//! `Allow` header, or a 400 for an undecodable path. HEAD is routed to GET routes.
//!
//! Matching is a linear scan: the management API has tens of routes, for which a scan over
//! pre-split patterns is as fast as a trie and much simpler to read.

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{ApiError, ErrorCode};
use crate::request::Method;
use crate::response::Response;
use crate::uri::percent_decode;

/// Why a route pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Patterns start with `/`.
    #[error("pattern {0:?} does not start with '/'")]
    NoLeadingSlash(String),
    /// A segment is `{}` or has braces in the middle (`a{b}`).
    #[error("pattern {0:?} has a malformed parameter segment")]
    BadParameter(String),
    /// The same parameter name appears twice.
    #[error("pattern {0:?} repeats a parameter name")]
    DuplicateParameter(String),
    /// A pattern for [`Method::Other`] or [`Method::Head`] (HEAD follows GET routes).
    #[error("routes are registered for concrete methods other than HEAD")]
    BadMethod,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed path pattern such as `/v1/tds/{id}/start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

impl PathPattern {
    /// Parses a pattern: `/`-separated segments, each a literal or a whole-segment `{name}`.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let rest = pattern
            .strip_prefix('/')
            .ok_or_else(|| PatternError::NoLeadingSlash(pattern.into()))?;
        let mut segments = Vec::new();
        if rest.is_empty() {
            return Ok(Self { segments });
        }
        for piece in rest.split('/') {
            let segment = match piece.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                    if segments.contains(&Segment::Param(name.into())) {
                        return Err(PatternError::DuplicateParameter(pattern.into()));
                    }
                    Segment::Param(name.into())
                }
                Some(_) => return Err(PatternError::BadParameter(pattern.into())),
                None if piece.contains(['{', '}']) => {
                    return Err(PatternError::BadParameter(pattern.into()));
                }
                None => Segment::Literal(piece.into()),
            };
            segments.push(segment);
        }
        Ok(Self { segments })
    }

    /// Whether the still-encoded `path` matches (used by tests to name a request's route).
    pub fn matches_path(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let decoded: Option<Vec<Cow<'_, str>>> = if rest.is_empty() {
            Some(Vec::new())
        } else {
            rest.split('/')
                .map(|s| percent_decode(s, false).ok())
                .collect()
        };
        decoded.is_some_and(|segments| self.matches(&segments).is_some())
    }

    /// Matches decoded path segments, returning the parameters.
    fn matches(&self, path: &[Cow<'_, str>]) -> Option<PathParams> {
        if path.len() != self.segments.len() {
            return None;
        }
        let mut params = PathParams::default();
        for (segment, actual) in self.segments.iter().zip(path) {
            match segment {
                Segment::Literal(lit) if lit == actual => {}
                Segment::Param(name) if !actual.is_empty() => {
                    params
                        .values
                        .push((name.clone(), String::from(actual.as_ref())));
                }
                _ => return None,
            }
        }
        Some(params)
    }
}

/// Path parameters of a matched route, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams {
    values: Vec<(String, String)>,
}

impl PathParams {
    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All parameters in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// A route found for a request.
#[derive(Debug)]
pub struct RouteMatch<'r, T> {
    /// The value registered with the route.
    pub value: &'r T,
    /// The pattern's parameters.
    pub params: PathParams,
}

/// Why no route was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No pattern matches the path (404).
    NotFound,
    /// Patterns match but not for this method (405); the methods that would.
    MethodNotAllowed(Vec<Method>),
    /// The path is not decodable (400).
    BadPath(ApiError),
}

impl RouteError {
    /// The error response: 404, 405 with `Allow`, or 400.
    pub fn to_response(&self) -> Response {
        match self {
            Self::NotFound => ApiError::not_found("no resource at this path").to_response(),
            Self::MethodNotAllowed(allow) => {
                let list: Vec<&str> = allow.iter().map(|m| m.as_str()).collect();
                let list = list.join(", ");
                ApiError::new(
                    ErrorCode::MethodNotAllowed,
                    format!("method not allowed here; allowed: {list}"),
                )
                .to_response()
                .with_header("Allow", list)
            }
            Self::BadPath(err) => err.to_response(),
        }
    }
}

struct Route<T> {
    method: Method,
    pattern: PathPattern,
    value: T,
}

/// A route table: `(method, pattern) → T`.
pub struct Router<T> {
    routes: Vec<Route<T>>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<T> Router<T> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route. Registering GET also serves HEAD.
    pub fn add(&mut self, method: Method, pattern: &str, value: T) -> Result<(), PatternError> {
        if matches!(method, Method::Other | Method::Head) {
            return Err(PatternError::BadMethod);
        }
        let pattern = PathPattern::parse(pattern)?;
        self.routes.push(Route {
            method,
            pattern,
            value,
        });
        Ok(())
    }

    /// Finds the route for `method` and the still-encoded `path`.
    pub fn find(&self, method: Method, path: &str) -> Result<RouteMatch<'_, T>, RouteError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(RouteError::NotFound);
        };
        let decoded: Vec<Cow<'_, str>> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/')
                .map(|s| percent_decode(s, false))
                .collect::<Result<_, _>>()
                .map_err(|e| RouteError::BadPath(ApiError::bad_request(format!("path: {e}"))))?
        };
        let wanted = if method == Method::Head {
            Method::Get
        } else {
            method
        };
        let mut allow: Vec<Method> = Vec::new();
        for route in &self.routes {
            let Some(params) = route.pattern.matches(&decoded) else {
                continue;
            };
            if route.method == wanted {
                return Ok(RouteMatch {
                    value: &route.value,
                    params,
                });
            }
            if !allow.contains(&route.method) {
                allow.push(route.method);
                if route.method == Method::Get {
                    allow.push(Method::Head);
                }
            }
        }
        if allow.is_empty() {
            Err(RouteError::NotFound)
        } else {
            Err(RouteError::MethodNotAllowed(allow))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<u32> {
        let mut r = Router::new();
        r.add(Method::Get, "/v1/tds", 1).unwrap();
        r.add(Method::Post, "/v1/tds", 2).unwrap();
        r.add(Method::Get, "/v1/tds/{id}", 3).unwrap();
        r.add(Method::Delete, "/v1/tds/{id}", 4).unwrap();
        r.add(Method::Post, "/v1/tds/{id}/start", 5).unwrap();
        r.add(Method::Get, "/", 6).unwrap();
        r
    }

    #[test]
    fn matches_literals_and_parameters() {
        let r = router();
        assert_eq!(*r.find(Method::Get, "/v1/tds").unwrap().value, 1);
        assert_eq!(*r.find(Method::Post, "/v1/tds").unwrap().value, 2);
        let m = r.find(Method::Post, "/v1/tds/td-9/start").unwrap();
        assert_eq!(*m.value, 5);
        assert_eq!(m.params.get("id"), Some("td-9"));
        assert_eq!(*r.find(Method::Get, "/").unwrap().value, 6);
    }

    #[test]
    fn decodes_segments_after_splitting() {
        let r = router();
        let m = r.find(Method::Get, "/v1/tds/a%2Fb%20c").unwrap();
        assert_eq!(m.params.get("id"), Some("a/b c"));
        assert_eq!(*r.find(Method::Get, "/v1/%74ds").unwrap().value, 1);
        match r.find(Method::Get, "/v1/tds/%zz") {
            Err(RouteError::BadPath(err)) => assert_eq!(err.code, ErrorCode::BadRequest),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_found_cases() {
        let r = router();
        for path in [
            "/v1",
            "/v1/tds/",
            "/v1/tds/1/stop",
            "/v2/tds",
            "*",
            "",
            "//",
        ] {
            assert!(
                matches!(r.find(Method::Get, path), Err(RouteError::NotFound)),
                "{path}"
            );
        }
    }

    #[test]
    fn method_not_allowed_lists_methods_with_head_for_get() {
        let r = router();
        let err = r.find(Method::Put, "/v1/tds/3").unwrap_err();
        assert_eq!(
            err,
            RouteError::MethodNotAllowed(alloc::vec![Method::Get, Method::Head, Method::Delete])
        );
        let resp = err.to_response();
        assert_eq!(resp.status.as_u16(), 405);
        assert_eq!(resp.header("allow"), Some("GET, HEAD, DELETE"));
        let err = r.find(Method::Get, "/v1/tds/3/start").unwrap_err();
        assert_eq!(err, RouteError::MethodNotAllowed(alloc::vec![Method::Post]));
        assert!(r.find(Method::Other, "/v1/tds").is_err());
    }

    #[test]
    fn head_follows_get() {
        let r = router();
        assert_eq!(*r.find(Method::Head, "/v1/tds/1").unwrap().value, 3);
    }

    #[test]
    fn rejects_bad_patterns() {
        let mut r: Router<()> = Router::new();
        assert!(matches!(
            r.add(Method::Get, "v1", ()),
            Err(PatternError::NoLeadingSlash(_))
        ));
        assert!(matches!(
            r.add(Method::Get, "/{}", ()),
            Err(PatternError::BadParameter(_))
        ));
        assert!(matches!(
            r.add(Method::Get, "/a{b}", ()),
            Err(PatternError::BadParameter(_))
        ));
        assert!(matches!(
            r.add(Method::Get, "/{a}/{a}", ()),
            Err(PatternError::DuplicateParameter(_))
        ));
        assert_eq!(r.add(Method::Head, "/x", ()), Err(PatternError::BadMethod));
    }
}
