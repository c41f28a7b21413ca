//! The binary's command line.

use std::process::Command;

fn infergate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_infergate"))
}

#[test]
fn version_prints_the_crate_version() {
    let out = infergate().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_accepts_the_documented_example() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/infergate.toml");
    let out = infergate()
        .args(["check-config", path])
        .env("VLLM_API_KEY", "x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_the_bad_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"0.0.0.0:8080\"\n\n[health]\ninterval_msec = 5\n",
    )
    .unwrap();
    let out = infergate().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("interval_msec") && err.contains("line 5"),
        "{err}"
    );

    std::fs::write(&path, "[[servers]]\nurl = \"http://a:1/v1\"\nprovider = \"vllm\"\nmodels = [\"m\"]\napi_key_env = \"\"\n").unwrap();
    let out = infergate().arg("check-config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("servers[0].api_key_env (line 5)"), "{err}");
}

#[test]
fn serve_without_config_explains_itself() {
    let out = infergate()
        .arg("serve")
        .env_remove("INFERGATE_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}
