//! Checks live responses against the management API's OpenAPI 3.1 document
//! (`mgmt-api/openapi.json`, the same bytes the appliance serves at `/v1/openapi.json`).
//!
//! What is verified: the request's path matches a documented path template and method; the
//! response status is listed explicitly for that operation; the `Content-Type` is one the
//! document lists for that status; a JSON body validates against the schema (JSON Schema
//! 2020-12 via the `jsonschema` crate: types, required and unknown members, enums, patterns).
//! Response headers other than `Content-Type` are not checked.

use appliance_image::http::HttpResponse;
use serde_json::{Value, json};

/// The document, parsed.
pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    /// The repository's document.
    pub fn load() -> Result<Self, String> {
        let text = include_str!("../../mgmt-api/openapi.json");
        let doc = serde_json::from_str(text).map_err(|e| format!("openapi.json: {e}"))?;
        Ok(Self { doc })
    }

    /// The documented path template `path` (no query) matches, e.g. `/v1/tds/{id}`.
    fn template_for(&self, path: &str) -> Option<&str> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"].as_object()?.keys().find_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            let matches = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s);
            matches.then_some(template.as_str())
        })
    }

    /// Checks one exchange; the error says what does not match.
    pub fn check(&self, method: &str, path: &str, response: &HttpResponse) -> Result<(), String> {
        let template = self
            .template_for(path)
            .ok_or_else(|| format!("{path} matches no documented path"))?;
        let operation = &self.doc["paths"][template][method.to_ascii_lowercase()];
        if !operation.is_object() {
            return Err(format!("{method} {template} is not documented"));
        }
        let mut documented = &operation["responses"][response.status.to_string()];
        if !documented.is_object() {
            return Err(format!(
                "status {} is not documented for {method} {template}: {}",
                response.status,
                response.body_text()
            ));
        }
        if let Some(reference) = documented.get("$ref").and_then(Value::as_str) {
            let name = reference.rsplit('/').next().unwrap_or_default();
            documented = &self.doc["components"]["responses"][name];
        }
        let Some(content) = documented.get("content").and_then(Value::as_object) else {
            return if response.body.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "status {} has an undocumented body",
                    response.status
                ))
            };
        };
        let media = response
            .header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let entry = content.get(media).ok_or_else(|| {
            format!(
                "Content-Type {media:?} is not documented for {}",
                response.status
            )
        })?;
        if media != "application/json" {
            return Ok(());
        }
        let value: Value =
            serde_json::from_slice(&response.body).map_err(|e| format!("body is not JSON: {e}"))?;
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [entry["schema"]],
        });
        let validator = jsonschema::validator_for(&schema).map_err(|e| format!("schema: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "body does not match the schema: {}; body: {value}",
                errors.join("; ")
            ))
        }
    }
}
