"""The gateway's OpenAPI document (served at ``/openapi.json``).

Written by hand: the bodies are binary envelopes, which a framework's JSON schemas would only
get in the way of describing.
"""

from __future__ import annotations

from typing import Any

from sealserve import __version__

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _retryable(description: str) -> dict[str, Any]:
    doc = _error(description)
    doc["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return doc


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the public inference API."""
    header = {"in": "header", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sealserve gateway",
            "version": __version__,
            "description": "Serverless inference on sealed envelopes: the gateway never "
            "sees a model, an input or an output in the clear.",
        },
        "paths": {
            "/v1/models/{owner_id}/{name}:infer": {
                "post": {
                    "summary": "Run a model on a sealed input",
                    "parameters": [
                        {"name": "owner_id", "in": "path", "required": True,
                         "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                        {"name": "name", "in": "path", "required": True,
                         "schema": {"type": "string"}},
                        {"name": "x-sealserve-user", **header,
                         "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                        {"name": "x-sealserve-request-id", **header,
                         "schema": {"type": "string",
                                    "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"}},
                        {"name": "x-sealserve-deadline", "in": "header", "required": False,
                         "schema": {"type": "integer"}, "description": "Unix ms"},
                        {"name": "x-sealserve-timeout-ms", "in": "header", "required": False,
                         "schema": {"type": "integer"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "The sealed output",
                            "content": {"application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}}},
                            "headers": {
                                "Server-Timing": {"schema": {"type": "string"}},
                                "x-sealserve-decision": {"schema": {"type": "string"}},
                                "x-sealserve-decision-reason": {"schema": {"type": "string"}},
                                "x-sealserve-instance": {"schema": {"type": "string"}},
                                "x-sealserve-policy": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _error("A malformed id, header or body; or an invalid envelope"),
                        "403": _error("Access denied: no grant or request key for this user"),
                        "404": _error("Unknown model"),
                        "411": _error("No Content-Length"),
                        "413": _error("The sealed input is over the limit"),
                        "429": _retryable("The gateway holds too many requests"),
                        "502": _error("The KeyService or the platform failed"),
                        "503": _retryable("Retryable: capacity, deadline, a restarting runtime"),
                        "507": _error("The model is larger than an instance's memory budget"),
                    },
                }
            },
            "/v1/models": {"get": {"summary": "The stored models",
                                   "responses": {"200": {"description": "Model list"}}}},
            "/v1/platform": {"get": {"summary": "Instances, meters and routing decisions",
                                     "responses": {"200": {"description": "Platform stats"}}}},
            "/healthz": {"get": {"summary": "Liveness",
                                 "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Prometheus text"}}}},
            "/v2/health/live": {"get": {"summary": "Liveness (Open Inference Protocol)",
                                        "responses": {"200": {"description": '{"live": true}'},
                                                      "503": {"description": "Not live"}}}},
            "/v2/health/ready": {"get": {"summary": "Readiness (Open Inference Protocol)",
                                         "responses": {"200": {"description": '{"ready": true}'},
                                                       "503": {"description": "Not ready"}}}},
            "/v1/prometheus/targets": {"get": {
                "summary": "What Prometheus scrapes (HTTP service discovery)",
                "responses": {"200": {"description": "Target groups"}}}},
            "/v1/models/{owner_id}/{name}": {
                "get": {"summary": "One stored model",
                        "responses": {"200": {"description": "Its manifest"},
                                      "404": _error("No such model")}},
                "delete": {"summary": "Delete a model (signed by its owner; ?digest=sha256:...)",
                           "responses": {"200": {"description": "Deleted"},
                                         "403": _error("Access denied"),
                                         "412": _error("The model changed since")}}},
            "/v1/uploads": {"post": {
                "summary": "Begin or resume a model upload (signed by the model's owner)",
                "responses": {"201": {"description": "Begun"}, "200": {"description": "Resumed"},
                              "403": _error("Access denied"),
                              "413": _error("The model is over the limit"),
                              "429": _retryable("Too many uploads in progress")}}},
            "/v1/uploads/{upload_id}": {
                "get": {"summary": "Where an upload stands",
                        "responses": {"200": {"description": "The upload"}}},
                "put": {"summary": "One chunk at ?offset=N (signed)",
                        "responses": {"200": {"description": "The upload, moved on"},
                                      "409": _error("Not at the upload's offset")}},
                "delete": {"summary": "Abandon an upload",
                           "responses": {"200": {"description": "Abandoned"}}}},
            "/v1/uploads/{upload_id}:commit": {"post": {
                "summary": "Check the digest and store the model",
                "responses": {"200": {"description": "Stored"},
                              "422": _error("Digest or format refused")}}},
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "retryable"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "retryable": {"type": "boolean"},
                            },
                        }
                    },
                }
            }
        },
    }  # fmt: skip
