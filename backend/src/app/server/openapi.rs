//! The OpenAPI document served at `/api/openapi.json`: paths written here, schemas derived
//! from the very types the handlers use, so they cannot drift apart.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Value};
use unlearn_shared::api::{ErrorBody, Health, ModelInfo, Run, RunAccepted, RunPage, RunRequest, Sample};

/// A reference to `T`'s schema, registering it under `components/schemas`.
fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

fn json_body(schema: Value) -> Value {
    json!({ "content": { "application/json": { "schema": schema } } })
}

fn ok(description: &str, schema: Value) -> Value {
    let mut response = json_body(schema);
    response["description"] = description.into();
    response
}

fn parameter(name: &str, place: &str, kind: &str, description: &str) -> Value {
    json!({ "name": name, "in": place, "required": place == "path", "schema": { "type": kind }, "description": description })
}

pub(crate) fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let error = ok("A JSON error", schema::<ErrorBody>(&mut generator));
    let errors = json!({ "4XX": error, "5XX": error });
    let with_errors = |mut responses: Value| {
        responses.as_object_mut().expect("object").extend(errors.as_object().expect("object").clone());
        responses
    };
    let run_id = parameter("id", "path", "integer", "Run id");
    let binary = json!({ "description": "safetensors (f16); supports If-None-Match", "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } });

    let paths = json!({
        "/api/health": { "get": { "summary": "Device, queue and version", "responses": with_errors(json!({ "200": ok("Server state", schema::<Health>(&mut generator)) })) } },
        "/api/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.0" } } } },
        "/api/models": { "get": { "summary": "Base models", "responses": with_errors(json!({ "200": ok("Models", json!({ "type": "array", "items": schema::<ModelInfo>(&mut generator) })) })) } },
        "/api/models/import": { "post": {
            "summary": "Import a ResNet18 safetensors checkpoint (token in public mode)",
            "parameters": [parameter("name", "query", "string", "Model id: 1-64 of a-z, 0-9, - and _")],
            "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
            "responses": with_errors(json!({ "201": ok("Imported", schema::<ModelInfo>(&mut generator)) })),
        } },
        "/api/models/{id}/weights": { "get": {
            "summary": "A base model's weights for the browser",
            "parameters": [parameter("id", "path", "string", "Model id")],
            "responses": with_errors(json!({ "200": binary, "304": { "description": "Not modified" } })),
        } },
        "/api/runs": {
            "get": {
                "summary": "Run history, newest first",
                "parameters": [parameter("before", "query", "integer", "Only runs older than this id"), parameter("limit", "query", "integer", "1-100, default 20")],
                "responses": with_errors(json!({ "200": ok("A page of runs (results left out, their headlines kept)", schema::<RunPage>(&mut generator)) })),
            },
            "post": {
                "summary": "Start a run. In public mode, train and sweep need the token, and requests without it are held to the server's default subsample, a preset's importance settings and two live runs per client (429); 507 while the disk is below its reserve",
                "requestBody": { "required": true, "content": json_body(schema::<RunRequest>(&mut generator))["content"].clone() },
                "responses": with_errors(json!({
                    "202": ok("Queued", schema::<RunAccepted>(&mut generator)),
                    "200": ok("An identical run that finished or is under way", schema::<RunAccepted>(&mut generator)),
                })),
            },
        },
        "/api/runs/{id}": {
            "get": { "summary": "A run with its progress or result", "parameters": [run_id], "responses": with_errors(json!({ "200": ok("The run", schema::<Run>(&mut generator)) })) },
            "delete": { "summary": "Cancel a queued or running run", "parameters": [run_id], "responses": with_errors(json!({ "200": ok("The run", schema::<Run>(&mut generator)) })) },
        },
        "/api/runs/{id}/events": { "get": {
            "summary": "Server-Sent Events: `status` (RunStatus), `progress` (ProgressEvent), then `done` (Run)",
            "parameters": [run_id],
            "responses": with_errors(json!({ "200": { "description": "An event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } } })),
        } },
        "/api/runs/{id}/weights": { "get": {
            "summary": "The unlearned model of an unlearn run; 410 once the server's disk budget deleted it (the run's record stays)",
            "parameters": [run_id],
            "responses": with_errors(json!({ "200": binary, "304": { "description": "Not modified" }, "410": error })),
        } },
        "/api/samples": { "get": {
            "summary": "Test images for the gallery",
            "parameters": [parameter("class", "query", "string", "Class number or name"), parameter("n", "query", "integer", "1-100, default 10")],
            "responses": with_errors(json!({ "200": ok("Samples", json!({ "type": "array", "items": schema::<Sample>(&mut generator) })) })),
        } },
        "/api/samples/{index}": { "get": {
            "summary": "One test image as a 32x32 PNG",
            "parameters": [parameter("index", "path", "integer", "Index in the test set")],
            "responses": with_errors(json!({ "200": { "description": "PNG", "content": { "image/png": { "schema": { "type": "string", "format": "binary" } } } } })),
        } },
    });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Machine-unlearning workbench", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": { "schemas": generator.take_definitions(true) },
    })
}
