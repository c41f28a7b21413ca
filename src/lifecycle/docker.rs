//! The docker runner: a model's engine in a container, through the Docker Engine API on its
//! unix socket. The container is `infergate-model-<id>`, labelled with the model and the node;
//! the models directory is mounted read-only at `/models`; the engine listens on 8000 inside,
//! published on 127.0.0.1 only (Cortex published on every interface); GPUs are device requests
//! (`selected_gpus`, or all; none for a llama.cpp model with `ngl` 0). The engine gets its own
//! API key in its environment, as with the process runner.

use super::command::{self, EngineCommand, Listen};
use super::logs::LogRing;
use super::record::{EngineType, ModelRecord};
use super::weights::Resolved;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The label naming the model a container runs.
pub const MODEL_LABEL: &str = "infergate.model";
/// The label naming the node that runs it.
pub const NODE_LABEL: &str = "infergate.node";
use tokio_stream::StreamExt;

/// The engine's port inside its container.
pub const CONTAINER_PORT: u16 = 8000;
/// Where the models directory is mounted.
pub const MODELS_MOUNT: &str = "/models";

/// The name of a model's container.
pub fn container_name(id: &str) -> String {
    format!("infergate-model-{id}")
}

/// What the container is made of.
pub struct ContainerSpec<'a> {
    pub model: &'a ModelRecord,
    pub resolved: &'a Resolved,
    pub image: &'a str,
    pub entrypoint: &'a [String],
    pub key: &'a str,
    pub host_port: u16,
    pub models_dir: &'a Path,
    pub node: &'a str,
    pub hf_token: Option<&'a str>,
}

/// A path in the models directory as the container sees it.
fn inside(path: &str, models_dir: &Path) -> String {
    match Path::new(path).strip_prefix(models_dir) {
        Ok(rel) => format!("{MODELS_MOUNT}/{}", rel.to_string_lossy()),
        Err(_) => path.to_string(),
    }
}

/// The command (as it runs in the container) and the container-create body.
pub fn create_body(c: &ContainerSpec<'_>) -> (EngineCommand, ContainerCreateBody) {
    let mut spec = c.resolved.spec.clone();
    for path in [&mut spec.tokenizer, &mut spec.hf_config_path]
        .into_iter()
        .flatten()
    {
        *path = inside(path, c.models_dir);
    }
    // GPUs are the device requests' business: inside, they are numbered from 0.
    spec.selected_gpus = None;
    let listen = Listen {
        host: "0.0.0.0",
        port: CONTAINER_PORT,
        api_key: c.key,
    };
    let weights = inside(&c.resolved.weights, c.models_dir);
    let cmd = command::build(&spec, c.entrypoint, &weights, &listen, c.hf_token);
    let args = cmd.argv[c.entrypoint.len()..].to_vec();
    let wants_gpu =
        !(c.model.spec.engine_type == EngineType::Llamacpp && c.model.spec.ngl == Some(0));
    let device_requests = wants_gpu.then(|| {
        let selected = c.model.spec.selected_gpus.as_ref();
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: selected.is_none().then_some(-1),
            device_ids: selected.map(|g| g.iter().map(u32::to_string).collect()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            options: None,
        }]
    });
    let port_key = format!("{CONTAINER_PORT}/tcp");
    let host = HostConfig {
        port_bindings: Some(HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(c.host_port.to_string()),
            }]),
        )])),
        binds: Some(vec![format!(
            "{}:{MODELS_MOUNT}:ro",
            c.models_dir.to_string_lossy()
        )]),
        device_requests,
        // Tensor-parallel workers share memory through /dev/shm.
        ipc_mode: Some("host".into()),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(c.image.to_string()),
        entrypoint: (!c.entrypoint.is_empty()).then(|| c.entrypoint.to_vec()),
        cmd: Some(args),
        env: Some(cmd.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        exposed_ports: Some(vec![port_key]),
        labels: Some(HashMap::from([
            (MODEL_LABEL.to_string(), c.model.id.clone()),
            (NODE_LABEL.to_string(), c.node.to_string()),
            (
                "infergate.served".to_string(),
                c.model.spec.served_model_name.clone(),
            ),
        ])),
        host_config: Some(host),
        ..Default::default()
    };
    (cmd, body)
}

/// A started container.
pub struct EngineContainer {
    docker: Docker,
    name: String,
    exited: Option<String>,
}

/// Connect to the Docker Engine API.
pub fn connect(socket: &Path) -> Result<Docker, String> {
    Docker::connect_with_socket(&socket.to_string_lossy(), 120, bollard::API_DEFAULT_VERSION)
        .map_err(|e| format!("cannot reach Docker at {}: {e}", socket.display()))
}

/// Remove a container, running or not (nothing to remove is not an error).
pub async fn remove(docker: &Docker, name: &str) {
    let force = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker.remove_container(name, Some(force)).await;
}

/// The containers labelled as this node's engines, as (model id, container name), running or
/// not.
pub async fn labelled(docker: &Docker, node: &str) -> Result<Vec<(String, String)>, String> {
    let filters = HashMap::from([("label", vec![format!("{NODE_LABEL}={node}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let found = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| format!("cannot list containers: {e}"))?;
    Ok(found
        .into_iter()
        .filter_map(|c| {
            let model = c.labels?.get(MODEL_LABEL)?.clone();
            let name = c.names?.first()?.trim_start_matches('/').to_string();
            Some((model, name))
        })
        .collect())
}

/// Create and start the container (pulling its image when the engine does not have it), and
/// follow its output into `logs`.
pub async fn start(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
    logs: &Arc<LogRing>,
) -> Result<EngineContainer, String> {
    // A container of the same name left by an earlier run goes first.
    remove(docker, name).await;
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    let created = match docker
        .create_container(Some(options.clone()), body.clone())
        .await
    {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            let image = body.image.clone().unwrap_or_default();
            logs.push(&format!("infergate: pulling {image}"));
            let pull = CreateImageOptionsBuilder::new().from_image(&image).build();
            let mut progress = docker.create_image(Some(pull), None, None);
            while let Some(step) = progress.next().await {
                step.map_err(|e| format!("cannot pull {image}: {e}"))?;
            }
            docker.create_container(Some(options), body).await
        }
        other => other,
    };
    created.map_err(|e| format!("cannot create container {name}: {e}"))?;
    docker
        .start_container(name, None)
        .await
        .map_err(|e| format!("cannot start container {name}: {e}"))?;
    let follow = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut output = docker.logs(name, Some(follow));
    let ring = logs.clone();
    tokio::spawn(async move {
        while let Some(Ok(chunk)) = output.next().await {
            for line in String::from_utf8_lossy(&chunk.into_bytes()).split(['\n', '\r']) {
                if !line.is_empty() {
                    ring.push(line);
                }
            }
        }
    });
    Ok(EngineContainer {
        docker: docker.clone(),
        name: name.to_string(),
        exited: None,
    })
}

impl EngineContainer {
    /// Wait for the container to exit: how it ended (cancel-safe).
    pub async fn wait(&mut self) -> String {
        if let Some(how) = &self.exited {
            return how.clone();
        }
        let mut waiting = self.docker.wait_container(&self.name, None);
        let how = match waiting.next().await {
            Some(Ok(r)) => format!("exited with code {}", r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                format!("exited with code {code}")
            }
            Some(Err(e)) => format!("was lost ({e})"),
            None => "was lost".to_string(),
        };
        self.exited = Some(how.clone());
        how
    }

    /// Stop (SIGTERM, then SIGKILL after `grace`) and remove the container.
    pub async fn stop(&mut self, grace: Duration) {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let stop = StopContainerOptionsBuilder::new().t(t).build();
        let _ = self.docker.stop_container(&self.name, Some(stop)).await;
        self.remove().await;
    }

    pub async fn remove(&self) {
        remove(&self.docker, &self.name).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_binds_loopback_mounts_read_only_and_carries_its_key() {
        let model: ModelRecord = serde_json::from_value(serde_json::json!({
            "id": "mdl_a", "state": "stopped", "created_ms": 0, "updated_ms": 0,
            "spec": {"name": "q", "served_model_name": "qwen", "local_path": "qwen",
                "selected_gpus": [2, 3], "tp_size": 2, "tokenizer": "tok"}}))
        .unwrap();
        let mut spec = model.spec.clone();
        spec.tokenizer = Some("/srv/models/tok".into());
        let resolved = Resolved {
            weights: "/srv/models/qwen".into(),
            spec,
        };
        let entrypoint = ["vllm".to_string(), "serve".to_string()];
        let (cmd, body) = create_body(&ContainerSpec {
            model: &model,
            resolved: &resolved,
            image: "vllm/vllm-openai:v0.11.0",
            entrypoint: &entrypoint,
            key: "k3y",
            host_port: 20001,
            models_dir: Path::new("/srv/models"),
            node: "gpu-1:8080",
            hf_token: None,
        });
        assert_eq!(cmd.argv[..2], entrypoint);
        assert_eq!(body.entrypoint.as_deref(), Some(&entrypoint[..]));
        assert_eq!(
            command::shell_line(body.cmd.as_ref().unwrap()),
            "/models/qwen --host 0.0.0.0 --port 8000 --served-model-name qwen --tokenizer /models/tok --tensor-parallel-size 2"
        );
        let env = body.env.unwrap();
        assert!(env.contains(&"VLLM_API_KEY=k3y".to_string()), "{env:?}");
        assert!(
            !env.iter().any(|e| e.starts_with("CUDA_VISIBLE_DEVICES")),
            "{env:?}"
        );
        let host = body.host_config.unwrap();
        let binding = &host.port_bindings.unwrap()["8000/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("20001"));
        assert_eq!(host.binds.unwrap(), ["/srv/models:/models:ro"]);
        let gpus = &host.device_requests.unwrap()[0];
        assert_eq!(
            gpus.device_ids.as_deref(),
            Some(&["2".to_string(), "3".to_string()][..])
        );
        assert_eq!(gpus.count, None);
        let labels = body.labels.unwrap();
        assert_eq!(labels["infergate.model"], "mdl_a");
        assert_eq!(labels["infergate.node"], "gpu-1:8080");
    }
}
