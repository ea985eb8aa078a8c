//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/status`.
//!
//! Tenant names appear only here, never on the tenant port. Nothing on this port touches
//! a child; every answer is built from the pool's state at the moment of the request.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::clients::Registry;
use crate::http::{Body, RequestBody, empty, json_response};
use crate::pool::Pool;

/// State the admin endpoints read.
#[derive(Debug)]
pub struct Admin {
    /// Tenants and children.
    pub pool: Arc<Pool>,
    /// Configured tenants.
    pub registry: Arc<Registry>,
    /// Renders the Prometheus text.
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled once the daemon drains: `/readyz` turns 503.
    pub draining: CancellationToken,
    /// `/readyz` is 503 while any tenant is in a crash loop (`--ready-requires-no-crashloop`).
    pub crashloop_unready: bool,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(self: Arc<Self>, req: Request<RequestBody>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz(),
            "/metrics" => self.metrics(),
            "/status" => self.status(),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz, /metrics or /status\n",
            ),
        }
    }

    fn readyz(&self) -> Response<Body> {
        if self.draining.is_cancelled() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        if self.crashloop_unready {
            let looping = self
                .pool
                .status(&self.registry)
                .into_iter()
                .filter(|t| t.state == "backoff")
                .count();
            if looping > 0 {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("{looping} tenant(s) in a crash loop\n"),
                );
            }
        }
        text(StatusCode::OK, "ready\n")
    }

    fn metrics(&self) -> Response<Body> {
        let Some(handle) = &self.metrics else {
            return text(StatusCode::NOT_FOUND, "metrics recorder not installed\n");
        };
        let tenants = self.pool.status(&self.registry);
        let alive = tenants.iter().filter(|t| t.pid.is_some()).count();
        for t in &tenants {
            crate::metrics::tenant_state(&t.client_id, t.sessions, t.inflight);
        }
        crate::metrics::totals(tenants.len(), alive);
        handle.run_upkeep(); // the exporter leaves histogram upkeep to its owner
        let mut response = Response::new(Body::full(Bytes::from(handle.render())));
        let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        response
    }

    fn status(&self) -> Response<Body> {
        let tenants = self.pool.status(&self.registry);
        let body = json!({ "draining": self.draining.is_cancelled(), "tenants": tenants });
        json_response(StatusCode::OK, Bytes::from(body.to_string()))
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
