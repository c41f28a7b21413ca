//! A local fake of RunPod's REST API v1 (`GET /pods`, `GET /pods/{podId}`,
//! `POST /pods/{podId}/stop|start`, bearer API key), following its published shapes. RunPod's
//! cloud cannot be reached from the test machines.
#![allow(dead_code)]

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

pub const API_KEY: &str = "rp-test-key";

#[derive(Default)]
pub struct FakeState {
    pub pods: Mutex<Vec<Value>>,
    pub list_calls: AtomicUsize,
    pub get_calls: AtomicUsize,
    /// "stop:<id>" / "start:<id>", in order.
    pub calls: Mutex<Vec<String>>,
    pub fail_list: AtomicBool,
    pub fail_get: AtomicBool,
    pub fail_stop: AtomicBool,
    pub fail_start: AtomicBool,
}

pub struct FakeRunPod {
    /// The API base, like https://rest.runpod.io/v1.
    pub url: String,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRunPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRunPod {
    pub async fn start(pods: Vec<Value>) -> FakeRunPod {
        let state = Arc::new(FakeState {
            pods: Mutex::new(pods),
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/pods", get(list))
            .route("/v1/pods/{id}", get(one))
            .route("/v1/pods/{id}/stop", post(stop))
            .route("/v1/pods/{id}/start", post(start))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeRunPod { url, state, task }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.calls.lock().unwrap().clone()
    }
}

/// `None` when the bearer is the API key, else RunPod's 401.
fn refused(h: &HeaderMap) -> Option<Response> {
    let ok =
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {API_KEY}"));
    (!ok).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Unauthorized"})),
        )
            .into_response()
    })
}

fn find(st: &FakeState, id: &str) -> Option<Value> {
    st.pods
        .lock()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
}

fn set_status(st: &FakeState, id: &str, status: &str) {
    for p in st.pods.lock().unwrap().iter_mut() {
        if p["id"] == id {
            p["desiredStatus"] = json!(status);
        }
    }
}

async fn list(State(st): State<Arc<FakeState>>, h: HeaderMap) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    st.list_calls.fetch_add(1, SeqCst);
    if st.fail_list.load(SeqCst) {
        return (StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response();
    }
    Json(Value::Array(st.pods.lock().unwrap().clone())).into_response()
}

async fn one(State(st): State<Arc<FakeState>>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    st.get_calls.fetch_add(1, SeqCst);
    if st.fail_get.load(SeqCst) {
        return (StatusCode::BAD_GATEWAY, "upstream connect error").into_response();
    }
    match find(&st, &id) {
        Some(p) => Json(p).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "pod not found"})),
        )
            .into_response(),
    }
}

async fn stop(State(st): State<Arc<FakeState>>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    st.calls.lock().unwrap().push(format!("stop:{id}"));
    if find(&st, &id).is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if st.fail_stop.load(SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "stop exploded").into_response();
    }
    set_status(&st, &id, "EXITED");
    Json(find(&st, &id)).into_response()
}

async fn start(State(st): State<Arc<FakeState>>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    st.calls.lock().unwrap().push(format!("start:{id}"));
    if st.fail_start.load(SeqCst) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "no GPU available"})),
        )
            .into_response();
    }
    set_status(&st, &id, "RUNNING");
    Json(find(&st, &id)).into_response()
}
