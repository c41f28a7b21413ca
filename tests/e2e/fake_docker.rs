//! A fake Docker Engine API on a unix socket, enough of it for the docker runner: list (by
//! label), create (404 for an image not pulled yet), pull, start, wait, logs, stop, remove. It records every
//! container-create body, and "runs" a container by running infergate's mock on the host port
//! the container publishes, with the key its environment carries.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct DockerState {
    /// Every container-create body, in order.
    pub created: Mutex<Vec<Value>>,
    pub pulled: Mutex<Vec<String>>,
    pub stopped: Mutex<Vec<String>>,
    pub removed: Mutex<Vec<String>>,
    containers: Mutex<HashMap<String, Container>>,
}

struct Container {
    body: Value,
    child: Option<tokio::process::Child>,
}

pub struct FakeDocker {
    pub socket: std::path::PathBuf,
    pub state: Arc<DockerState>,
    _dir: tempfile::TempDir,
}

type S = State<Arc<DockerState>>;

impl FakeDocker {
    pub async fn start() -> FakeDocker {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let state = Arc::new(DockerState::default());
        // With or without an API version prefix (`/v1.53/...`).
        let api = Router::new()
            .route("/containers/json", get(list))
            .route("/containers/create", post(create))
            .route("/containers/{name}", delete(remove))
            .route("/containers/{name}/start", post(start))
            .route("/containers/{name}/wait", post(wait))
            .route("/containers/{name}/logs", get(logs))
            .route("/containers/{name}/stop", post(stop))
            .route("/images/create", post(pull));
        let app = api
            .clone()
            .nest("/{version}", api)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeDocker {
            socket,
            state,
            _dir: dir,
        }
    }
}

impl FakeDocker {
    /// A container that exists before the gateway starts (left by an earlier run), not running.
    pub fn plant(&self, name: &str, labels: Value) {
        self.state.containers.lock().unwrap().insert(
            name.to_string(),
            Container {
                body: json!({"Image": "vllm/vllm-openai:latest", "Labels": labels}),
                child: None,
            },
        );
    }
}

/// `GET /containers/json?all=true&filters={"label":["k=v"]}`: the containers carrying every
/// label asked for.
async fn list(State(st): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let filters: Value = q
        .get("filters")
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_default();
    let wanted: Vec<(String, String)> = filters["label"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let containers = st.containers.lock().unwrap();
    let found: Vec<Value> = containers
        .iter()
        .filter(|(_, c)| wanted.iter().all(|(k, v)| c.body["Labels"][k] == v.as_str()))
        .map(|(name, c)| {
            json!({"Id": name, "Names": [format!("/{name}")], "Image": c.body["Image"],
                "Labels": c.body["Labels"], "State": if c.child.is_some() { "running" } else { "created" }})
        })
        .collect();
    Json(found).into_response()
}

fn no_such(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": format!("No such {what}")})),
    )
        .into_response()
}

async fn create(
    State(st): S,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let name = q.get("name").cloned().unwrap_or_default();
    let image = body["Image"].as_str().unwrap_or_default().to_string();
    if image.starts_with("missing/") && !st.pulled.lock().unwrap().contains(&image) {
        return no_such(&format!("image: {image}"));
    }
    st.created.lock().unwrap().push(body.clone());
    st.containers
        .lock()
        .unwrap()
        .insert(name.clone(), Container { body, child: None });
    (
        StatusCode::CREATED,
        Json(json!({"Id": name, "Warnings": []})),
    )
        .into_response()
}

async fn pull(State(st): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let image = q.get("fromImage").cloned().unwrap_or_default();
    st.pulled.lock().unwrap().push(image);
    "{\"status\":\"Pulling\"}\n{\"status\":\"Downloaded newer image\"}\n".into_response()
}

/// The value after `flag` in an argv.
fn after<'a>(argv: &'a [Value], flag: &str) -> Option<&'a str> {
    let i = argv.iter().position(|a| a == flag)?;
    argv.get(i + 1)?.as_str()
}

async fn start(State(st): S, Path(p): Path<HashMap<String, String>>) -> Response {
    let name = p["name"].clone();
    let mut containers = st.containers.lock().unwrap();
    let Some(c) = containers.get_mut(&name) else {
        return no_such("container");
    };
    let argv = c.body["Cmd"].as_array().cloned().unwrap_or_default();
    let served = after(&argv, "--served-model-name")
        .or(after(&argv, "--alias"))
        .unwrap_or("model")
        .to_string();
    let port = c.body["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostPort"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = c.body["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|e| {
            e.strip_prefix("VLLM_API_KEY=")
                .or(e.strip_prefix("LLAMA_API_KEY="))
        })
        .unwrap_or_default()
        .to_string();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["mock", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--models", &served, "--name", "fake-docker"])
        .env("INFERGATE_MOCK_API_KEY", key)
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    c.child = Some(child);
    StatusCode::NO_CONTENT.into_response()
}

/// Until the container's process exits.
async fn wait(State(st): S, Path(p): Path<HashMap<String, String>>) -> Response {
    let name = p["name"].clone();
    loop {
        let code = {
            let mut containers = st.containers.lock().unwrap();
            let Some(c) = containers.get_mut(&name) else {
                return no_such("container");
            };
            match c.child.as_mut().map(|ch| ch.try_wait()) {
                Some(Ok(Some(status))) => Some(status.code().unwrap_or(137)),
                None => Some(0),
                _ => None,
            }
        };
        if let Some(code) = code {
            return Json(json!({"StatusCode": code})).into_response();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One multiplexed stdout frame (Docker's format without a TTY).
async fn logs(Path(p): Path<HashMap<String, String>>) -> Response {
    let name = &p["name"];
    let line = format!("fake-docker: container {name} started\n");
    let mut frame = vec![1u8, 0, 0, 0];
    frame.extend_from_slice(&(line.len() as u32).to_be_bytes());
    frame.extend_from_slice(line.as_bytes());
    Response::builder()
        .header("content-type", "application/vnd.docker.multiplexed-stream")
        .body(Body::from(frame))
        .unwrap()
}

async fn stop(State(st): S, Path(p): Path<HashMap<String, String>>) -> Response {
    let name = p["name"].clone();
    st.stopped.lock().unwrap().push(name.clone());
    let mut containers = st.containers.lock().unwrap();
    let Some(c) = containers.get_mut(&name) else {
        return no_such("container");
    };
    if let Some(child) = c.child.as_mut() {
        let _ = child.start_kill();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn remove(State(st): S, Path(p): Path<HashMap<String, String>>) -> Response {
    let name = p["name"].clone();
    match st.containers.lock().unwrap().remove(&name) {
        Some(mut c) => {
            if let Some(child) = c.child.as_mut() {
                let _ = child.start_kill();
            }
            st.removed.lock().unwrap().push(name);
            StatusCode::NO_CONTENT.into_response()
        }
        None => no_such("container"),
    }
}
