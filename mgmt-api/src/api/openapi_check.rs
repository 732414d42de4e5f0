//! Checks between the OpenAPI document (`mgmt-api/openapi.json`) and the code: every route
//! of [`ROUTES`] is documented with its method, access and body, and nothing else is; the
//! error codes match [`ErrorCode::ALL`]; and responses produced by the in-process tests
//! validate against the documented schemas (JSON Schema 2020-12, `jsonschema` crate).
//!
//! What the response check verifies: the status is listed explicitly for the operation,
//! the `Content-Type` is one the document lists for it, and a JSON body validates against
//! the schema (types, required and unknown members, enums, patterns, `oneOf`). It does not
//! check documented response headers beyond `Content-Type`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Value, json};

use super::*;
use crate::handlers::OPENAPI_JSON;
use crate::server::tests::Parsed;

pub fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
}

fn method_key(method: Method) -> &'static str {
    match method {
        Method::Get => "get",
        Method::Post => "post",
        Method::Put => "put",
        Method::Delete => "delete",
        Method::Patch => "patch",
        Method::Head => "head",
        Method::Options => "options",
        Method::Other => "other",
    }
}

/// A validator for `schema` (inline or `$ref`) resolved against the document.
pub fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema {schema}: {e}"))
}

/// Validates `value` against `schema`; the error lists every violation.
pub fn validate(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    let v = validator(doc, schema);
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Checks every response against the operation's documented responses.
pub fn check_responses(seen: &[(Method, &'static str, Parsed)]) {
    let doc = document();
    for (method, pattern, resp) in seen {
        let op = &doc["paths"][*pattern][method_key(*method)];
        assert!(op.is_object(), "{pattern} {method:?} not documented");
        let documented = &op["responses"][resp.status.to_string()];
        assert!(
            documented.is_object(),
            "{} {pattern}: status {} is not documented",
            method.as_str(),
            resp.status
        );
        let documented = match documented.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap();
                &doc["components"]["responses"][name]
            }
            None => documented,
        };
        let Some(content) = documented.get("content").and_then(Value::as_object) else {
            assert!(
                resp.body.is_empty(),
                "{pattern} {}: undocumented body",
                resp.status
            );
            continue;
        };
        let media = resp
            .header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_string();
        let Some(entry) = content.get(&media) else {
            panic!(
                "{pattern} {}: Content-Type {media} not documented",
                resp.status
            );
        };
        if media == "application/json" {
            let value: Value = serde_json::from_slice(&resp.body).unwrap();
            if let Err(e) = validate(&doc, &entry["schema"], &value) {
                panic!(
                    "{} {pattern} {}: {e}\nbody: {value}",
                    method.as_str(),
                    resp.status
                );
            }
        }
    }
}

#[test]
fn routes_and_document_agree() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for spec in ROUTES {
        let op = &paths
            .get(spec.pattern)
            .unwrap_or_else(|| panic!("{} not in openapi.json", spec.pattern))
            [method_key(spec.method)];
        assert!(
            op.is_object(),
            "{} {} not in openapi.json",
            spec.method.as_str(),
            spec.pattern
        );
        let public = op.get("security") == Some(&json!([]));
        assert_eq!(
            public,
            spec.access == Access::Public,
            "{} access",
            spec.pattern
        );
        if !public {
            assert!(
                op["responses"]["401"].is_object(),
                "{} documents 401",
                spec.pattern
            );
            assert_eq!(
                op["responses"]["403"].is_object(),
                spec.access == Access::Admin,
                "{} {} documents 403 exactly when it needs an admin token",
                spec.method.as_str(),
                spec.pattern
            );
        }
        let body = op.get("requestBody");
        let media = body
            .and_then(|b| b["content"].as_object())
            .map(|c| c.keys().cloned().collect::<Vec<_>>());
        let required = body.is_some_and(|b| b["required"] == true);
        match spec.body {
            BodyKind::None => assert!(body.is_none(), "{} has no body", spec.pattern),
            BodyKind::Json => {
                assert_eq!(media.unwrap(), ["application/json"]);
                assert!(required);
            }
            BodyKind::OptionalJson => {
                assert_eq!(media.unwrap(), ["application/json"]);
                assert!(!required);
            }
            BodyKind::OctetStream => {
                assert_eq!(media.unwrap(), ["application/octet-stream"]);
                assert!(required);
            }
        }
    }
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            if method == "parameters" {
                continue;
            }
            assert!(
                ROUTES
                    .iter()
                    .any(|r| r.pattern == path && method_key(r.method) == method),
                "openapi.json documents {method} {path}, which is not a route"
            );
        }
    }
}

#[test]
fn error_codes_match() {
    let doc = document();
    let documented: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let code: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, code);
}

#[test]
fn bringup_step_names_match() {
    use tdx_runtime::host::{BringupStage, StepStatus};
    let doc = document();
    let item = &doc["components"]["schemas"]["HostReport"]["properties"]["bringup"]["items"];
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    let stages: Vec<String> = BringupStage::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    assert_eq!(names(&item["properties"]["step"]["enum"]), stages);
    let statuses: Vec<String> = [StepStatus::Ok, StepStatus::Failed, StepStatus::Skipped]
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    assert_eq!(names(&item["properties"]["status"]["enum"]), statuses);
}

#[test]
fn every_schema_compiles_and_rejects_unknown_members() {
    let doc = document();
    for (name, _) in doc["components"]["schemas"].as_object().unwrap() {
        validator(
            &doc,
            &json!({ "$ref": format!("#/components/schemas/{name}") }),
        );
    }
    let td_schema = json!({"$ref": "#/components/schemas/CreateTd"});
    let ok = json!({"name": "a", "image": "i", "vcpus": 1, "memory_mib": 64,
        "workload": {"steps": ["halt", {"touch": {"gpa": "0x1000", "len": 4096, "access": "read"}}]}});
    validate(&doc, &td_schema, &ok).unwrap();
    let mut bad = ok.clone();
    bad["colour"] = json!("red");
    assert!(validate(&doc, &td_schema, &bad).is_err());
    let bad = json!({"name": "a", "image": "i", "vcpus": 1, "memory_mib": 64,
        "workload": {"steps": [{"touch": {"gpa": 0, "len": 1, "access": "read", "x": 1}}]}});
    assert!(validate(&doc, &td_schema, &bad).is_err());
}
