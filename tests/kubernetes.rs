//! deploy/kubernetes/ and deploy/docker/: every manifest passes
//! kubernetes-validate (strict, at the oldest Kubernetes they are written
//! for and at the newest the validator knows), and the PodMonitor, a custom
//! resource it does not know, a strict schema of the fields it uses; the
//! ConfigMap's config passes `corral check`; the facts that tie the files
//! together hold (drain timing, probe and scrape ports, selectors, the
//! upstream's DNS name, the image's command, ports and user); and the
//! probes' script, run as kubelet runs it, gets `/healthz` from a corral
//! started on that config.
//!
//! The YAML is read by PyYAML, and validated, from the virtual environment
//! that scripts/test makes with tests/kubernetes/requirements.txt: the folder
//! `CORRAL_TEST_VENV` names, else target/ci-venv. Without it these tests
//! fail, saying how to make it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KUBERNETES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kubernetes/manifests.py");
const PODMONITOR_SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/kubernetes/podmonitor.schema.json"
);

/// The oldest Kubernetes the manifests are written for: the preStop hook's
/// `sleep` action is on by default from 1.30.
const OLDEST_KUBERNETES: &str = "1.30.0";

// ---- the virtual environment ----

fn venv() -> PathBuf {
    std::env::var_os("CORRAL_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/ci-venv"))
}

/// An executable of the virtual environment; fails the test, saying how to
/// make it, if it is not there.
fn venv_tool(name: &str) -> PathBuf {
    let tool = venv().join("bin").join(name);
    assert!(
        tool.is_file(),
        "{} is missing: these tests need a virtual environment with tests/kubernetes/requirements.txt, \
         as scripts/test makes it: `python3 -m venv target/ci-venv && target/ci-venv/bin/pip install -r \
         tests/kubernetes/requirements.txt` (or name another one in CORRAL_TEST_VENV)",
        tool.display()
    );
    tool
}

/// Runs `command` to its end; its exit status and stdout + stderr.
fn run(command: &mut Command) -> (bool, String) {
    let out = output_patiently(command);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---- the manifests, as kubectl reads them ----

/// The manifests' file names (kustomization.yaml apart), sorted.
fn manifest_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(KUBERNETES)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .filter(|n| n != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

struct Manifests {
    /// Every object of every manifest, with its file's name.
    objects: Vec<(String, Value)>,
    kustomization: Value,
}

/// Every YAML file under deploy/kubernetes, read once by PyYAML.
fn manifests() -> &'static Manifests {
    static MANIFESTS: OnceLock<Manifests> = OnceLock::new();
    MANIFESTS.get_or_init(|| {
        let mut files = manifest_files();
        files.push("kustomization.yaml".into());
        let out = output_patiently(
            Command::new(venv_tool("python"))
                .arg(HELPER)
                .arg("json")
                .args(files.iter().map(|f| Path::new(KUBERNETES).join(f))),
        );
        assert!(
            out.status.success(),
            "reading the manifests: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut objects = Vec::new();
        let mut kustomization = None;
        for (name, file) in files.iter().zip(read) {
            let docs = file["objects"].as_array().unwrap().clone();
            if name == "kustomization.yaml" {
                assert_eq!(docs.len(), 1, "kustomization.yaml holds one document");
                kustomization = docs.into_iter().next();
            } else {
                assert!(!docs.is_empty(), "{name} holds no object");
                objects.extend(docs.into_iter().map(|o| (name.clone(), o)));
            }
        }
        Manifests {
            objects,
            kustomization: kustomization.unwrap(),
        }
    })
}

impl Manifests {
    /// The one object of `kind` named `name`.
    fn get(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .objects
            .iter()
            .map(|(_, o)| o)
            .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} named {name}");
        found[0]
    }

    /// The only object of `kind`, whatever its name.
    fn only(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self
            .objects
            .iter()
            .map(|(_, o)| o)
            .filter(|o| o["kind"] == kind)
            .collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    }

    fn deployment(&self) -> &Value {
        self.get("Deployment", "corral")
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "the pod runs corral alone");
        &containers[0]
    }

    fn pod_labels(&self) -> &serde_json::Map<String, Value> {
        self.deployment()["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap()
    }

    /// The container's port named `name`.
    fn container_port(&self, name: &str) -> u16 {
        let ports = self.container()["ports"].as_array().unwrap();
        let port = ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("the container has no port named {name}: {ports:?}"));
        u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap()
    }

    /// `corral run --config PATH`: PATH.
    fn config_path(&self) -> String {
        let args: Vec<&str> = self.container()["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        match args.as_slice() {
            ["run", "--config", path] => (*path).to_owned(),
            other => panic!("the container should run `corral run --config PATH`, not {other:?}"),
        }
    }

    /// The ConfigMap's corral.toml: the key named by the config path.
    fn config_text(&self) -> String {
        let path = self.config_path();
        let key = Path::new(&path).file_name().unwrap().to_str().unwrap();
        let map = self.get("ConfigMap", &self.config_map_name());
        map["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no {key}"))
            .to_owned()
    }

    /// The ConfigMap whose volume is mounted where the config is read.
    fn config_map_name(&self) -> String {
        let mount = self.config_mount();
        let volume = self.pod()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the config mount's volume");
        volume["configMap"]["name"]
            .as_str()
            .expect("the config's volume is a ConfigMap")
            .to_owned()
    }

    /// The volume mount that holds the config file's folder.
    fn config_mount(&self) -> &Value {
        let path = self.config_path();
        let folder = Path::new(&path)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        self.container()["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == folder.as_str())
            .unwrap_or_else(|| panic!("nothing is mounted at {folder}"))
    }

    /// The probe's command, for an exec probe: `bash -c SCRIPT NAME STATUSES`.
    fn probe(&self, which: &str) -> Vec<String> {
        let probe = &self.container()[which];
        probe["exec"]["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{which} is not an exec probe: {probe}"))
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }
}

/// The shipped config, parsed.
fn config() -> toml::Table {
    manifests().config_text().parse().unwrap()
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap()
}

/// Every `key: value` of `selector` (its matchLabels) is a label of the pods.
fn selects_the_pods(what: &str, selector: &Value) {
    let labels = manifests().pod_labels();
    let wanted = selector.as_object().unwrap();
    assert!(!wanted.is_empty(), "{what} selects everything");
    for (key, value) in wanted {
        assert_eq!(
            labels.get(key),
            Some(value),
            "{what} asks {key}={value}; the pods have {labels:?}"
        );
    }
}

// ---- validation ----

#[test]
fn every_manifest_passes_kubernetes_validate_strictly() {
    let m = manifests();
    // The PodMonitor is a custom resource, which kubernetes-validate does not
    // know: it would pass it with a warning (see the next test instead).
    let files: BTreeSet<&str> = m
        .objects
        .iter()
        .filter(|(_, o)| o["kind"] != "PodMonitor")
        .map(|(f, _)| f.as_str())
        .collect();
    let objects = m
        .objects
        .iter()
        .filter(|(f, _)| files.contains(f.as_str()))
        .count();
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut command = Command::new(venv_tool("kubernetes-validate"));
        command.arg("--strict");
        if let Some(v) = version {
            command.args(["--kubernetes-version", v]);
        }
        command.args(files.iter().map(|f| Path::new(KUBERNETES).join(f)));
        let (ok, out) = run(&mut command);
        let against = version.unwrap_or("the newest version it knows");
        assert!(ok, "kubernetes-validate --strict, {against}:\n{out}");
        // A warning is a kind or apiVersion it has no schema for (a typo
        // included), which it lets through.
        assert!(
            !out.contains("WARN") && !out.contains("ERROR"),
            "kubernetes-validate, {against}:\n{out}"
        );
        assert_eq!(
            out.lines().filter(|l| l.contains(" passed for ")).count(),
            objects,
            "every object validated, {against}:\n{out}"
        );
    }
}

/// Validates `object` against tests/kubernetes/podmonitor.schema.json.
fn podmonitor_schema(object: &Value) -> (bool, String) {
    let mut child = Command::new(venv_tool("python"))
        .args([HELPER, "podmonitor", PODMONITOR_SCHEMA])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, object.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = wait_output(child);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_podmonitor_passes_a_strict_schema_of_the_fields_it_uses() {
    let monitor = manifests().only("PodMonitor");
    let (ok, out) = podmonitor_schema(monitor);
    assert!(ok, "podmonitor.yaml:\n{out}");
    // The schema is not vacuous: a misspelt key, or one out of place, fails.
    let mut misspelt = monitor.clone();
    misspelt["spec"]["podMetricsEndpoints"][0]["intervall"] = json!("15s");
    let (ok, out) = podmonitor_schema(&misspelt);
    assert!(!ok && out.contains("intervall"), "{out}");
    let mut misplaced = monitor.clone();
    misplaced["spec"]["port"] = json!("admin");
    let (ok, out) = podmonitor_schema(&misplaced);
    assert!(!ok && out.contains("'port' was unexpected"), "{out}");
}

#[test]
fn the_kustomization_lists_every_manifest_in_one_namespace() {
    let m = manifests();
    let k = &m.kustomization;
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    let keys: BTreeSet<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    let known: BTreeSet<&str> = ["apiVersion", "kind", "namespace", "resources", "images"].into();
    assert!(keys.is_subset(&known), "unexpected keys: {keys:?}");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = manifest_files().into_iter().collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");
    let namespace = k["namespace"].as_str().unwrap();
    for (file, object) in &m.objects {
        assert_eq!(
            object["metadata"]["namespace"], namespace,
            "{file}: the kustomization's namespace, so that `kubectl apply -f` places it alike"
        );
    }
    // The image the kustomization sets is the one the Deployment names.
    let image = m.container()["image"].as_str().unwrap();
    let name = k["images"][0]["name"].as_str().unwrap();
    assert!(image.starts_with(&format!("{name}:")), "{image} vs {name}");
}

// ---- the config ----

#[tokio::test]
async fn the_configmap_config_passes_corral_check() {
    let text = manifests().config_text();
    // Its upstream's name resolves here through a DNS server on loopback,
    // as it would in the cluster: appended, the only change to the text.
    let dns = DnsServer::start().await;
    let (name, _) = upstream_name(&config());
    dns.set(&name, &[IpAddr::from([10, 0, 0, 7])], 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    let with_resolver = format!("{text}\n[resolver]\nnameservers = [\"{}\"]\n", dns.addr);
    std::fs::write(&path, &with_resolver).unwrap();
    let check = move |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["check", "--config"]).arg(&path);
        match token {
            Some(t) => command.env("CORRAL_ADMIN_TOKEN", t),
            None => command.env_remove("CORRAL_ADMIN_TOKEN"),
        };
        run(&mut command)
    };
    let (ok, out) = tokio::task::spawn_blocking({
        let check = check.clone();
        move || check(Some("a-token-from-the-secret"))
    })
    .await
    .unwrap();
    assert!(ok, "corral check on the ConfigMap's corral.toml:\n{out}");
    assert!(
        out.contains(": ok (") && !out.contains("warning"),
        "a clean check:\n{out}"
    );
    assert!(dns.queries(&name) > 0, "check looked {name} up here");
    // Off loopback the admin endpoint needs the token: without the Secret's
    // variable, corral would not start.
    let (ok, out) = tokio::task::spawn_blocking(move || check(None))
        .await
        .unwrap();
    assert!(!ok && out.contains("CORRAL_ADMIN_TOKEN"), "{out}");
}

/// The only upstream's only server: `NAME:PORT`.
fn upstream_name(config: &toml::Table) -> (String, u16) {
    let upstreams = config["upstreams"].as_array().unwrap();
    assert_eq!(upstreams.len(), 1);
    let servers = upstreams[0]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1);
    let addr = servers[0]["addr"].as_str().unwrap();
    let (name, port) = addr.rsplit_once(':').unwrap();
    (name.to_owned(), port.parse().unwrap())
}

// ---- facts across the files ----

#[test]
fn the_grace_period_outlasts_the_prestop_sleep_and_the_drain() {
    let m = manifests();
    let grace = m.pod()["terminationGracePeriodSeconds"].as_u64().unwrap();
    let sleep = m.container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep, so that endpoints go before the drain starts");
    assert!(sleep >= 5, "{sleep} s is too short for endpoints to go");
    let drain = duration(config()["runtime"]["shutdown_timeout"].as_str().unwrap());
    // Counted from the start of preStop; some seconds more for the master
    // to stop its workers and exit once the drain is cut.
    assert!(
        Duration::from_secs(grace) >= Duration::from_secs(sleep) + drain + Duration::from_secs(5),
        "terminationGracePeriodSeconds {grace} vs preStop {sleep} s + shutdown_timeout {drain:?}"
    );
}

#[test]
fn the_config_is_a_configmap_directory_where_corral_reads_it() {
    let m = manifests();
    let mount = m.config_mount();
    assert!(
        mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
        "a subPath mount is never updated: corral would not see a ConfigMap change"
    );
    assert_eq!(mount["readOnly"], true);
    // The Dockerfile runs the same command by default.
    let path = m.config_path();
    let dockerfile = dockerfile();
    let cmd = instruction(&dockerfile, "CMD");
    assert_eq!(
        serde_json::from_str::<Value>(&cmd).unwrap(),
        json!(["run", "--config", path]),
        "the image's CMD and the Deployment's args"
    );
}

#[test]
fn the_probes_and_the_podmonitor_reach_the_admin_endpoint() {
    let m = manifests();
    let config = config();
    let admin: SocketAddr = config["admin"]["listen"].as_str().unwrap().parse().unwrap();
    // On the pod's addresses: Prometheus scrapes the pod IP.
    assert!(admin.ip().is_unspecified(), "admin.listen {admin}");
    let port = m.container_port("admin");
    assert_eq!(port, admin.port(), "the container's admin port");
    // Both probes run one script, connecting over loopback to the admin
    // port and asking /healthz; readiness passes 200 alone, liveness a 503
    // too (the master answers: its workers are its business).
    let readiness = m.probe("readinessProbe");
    let liveness = m.probe("livenessProbe");
    assert_eq!(readiness[..2], ["/bin/bash", "-c"]);
    assert_eq!(readiness[..3], liveness[..3], "one script for both probes");
    let script = &readiness[2];
    assert_eq!(
        script.matches("/dev/tcp/").count(),
        1,
        "one connection: {script}"
    );
    assert!(script.contains(&loopback_connect(admin.port())), "{script}");
    assert!(script.contains("'GET /healthz HTTP/1.1\\r\\n"), "{script}");
    assert_eq!(readiness[3..], ["readiness", "200"]);
    assert_eq!(liveness[3..], ["liveness", "200|503"]);
    // The token both send is the pods' CORRAL_ADMIN_TOKEN, from the Secret
    // the PodMonitor reads it from too.
    assert!(script.contains("Authorization: Bearer %s"), "{script}");
    let env = m.container()["env"].as_array().unwrap();
    let token = env
        .iter()
        .find(|e| e["name"] == "CORRAL_ADMIN_TOKEN")
        .expect("CORRAL_ADMIN_TOKEN");
    let secret = &token["valueFrom"]["secretKeyRef"];
    let monitor = m.only("PodMonitor");
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let scrape = &endpoints[0];
    assert_eq!(
        scrape["port"], "admin",
        "the container port the PodMonitor scrapes"
    );
    assert_eq!(scrape["path"], "/metrics");
    assert_eq!(scrape["authorization"]["type"], "Bearer");
    assert_eq!(
        scrape["authorization"]["credentials"]["name"],
        secret["name"]
    );
    assert_eq!(scrape["authorization"]["credentials"]["key"], secret["key"]);
    selects_the_pods(
        "the PodMonitor",
        &monitor["spec"]["selector"]["matchLabels"],
    );
    // Its job label is the pods' name label: `corral`, which the alert
    // rules ask for.
    let job = m.pod_labels()[monitor["spec"]["jobLabel"].as_str().unwrap()].clone();
    assert_eq!(job, "corral");
    let alerts =
        std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/corral-alerts.yml")).unwrap();
    assert!(alerts.contains("job=\"corral\""));
}

#[test]
fn the_service_reaches_the_listener_and_every_selector_the_pods() {
    let m = manifests();
    let config = config();
    let listeners = config["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    let listen: SocketAddr = listeners[0]["listen"].as_str().unwrap().parse().unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "the listener is on the pod's addresses"
    );
    let service = m.get("Service", "corral");
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    let target = &ports[0]["targetPort"];
    let target = match target.as_str() {
        Some(name) => m.container_port(name),
        None => u16::try_from(target.as_u64().unwrap()).unwrap(),
    };
    assert_eq!(target, listen.port(), "the Service's targetPort");
    selects_the_pods("the Service", &service["spec"]["selector"]);
    selects_the_pods(
        "the Deployment",
        &m.deployment()["spec"]["selector"]["matchLabels"],
    );
    let budget = m.only("PodDisruptionBudget");
    selects_the_pods(
        "the PodDisruptionBudget",
        &budget["spec"]["selector"]["matchLabels"],
    );
    assert!(
        m.deployment()["spec"]["replicas"].as_u64().unwrap() >= 2,
        "a budget and a spread need two pods at least"
    );
    for spread in m.pod()["topologySpreadConstraints"].as_array().unwrap() {
        selects_the_pods("a topology spread", &spread["labelSelector"]["matchLabels"]);
    }
}

#[test]
fn the_upstream_is_the_headless_service_by_its_whole_name() {
    let m = manifests();
    let (name, port) = upstream_name(&config());
    let namespace = m.kustomization["namespace"].as_str().unwrap();
    let headless: Vec<&Value> = m
        .objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| o["kind"] == "Service" && o["spec"]["clusterIP"] == "None")
        .collect();
    assert_eq!(headless.len(), 1);
    let service = headless[0];
    // corral appends no search domain.
    let service_name = service["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        name,
        format!("{service_name}.{namespace}.svc.cluster.local")
    );
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert!(ports.contains(&u64::from(port)), "{port} in {ports:?}");
    // It selects the backends, not corral.
    let selector = service["spec"]["selector"].as_object().unwrap();
    assert!(
        selector
            .iter()
            .any(|(k, v)| m.pod_labels().get(k).is_some_and(|l| l != v)),
        "the headless Service selects corral's own pods"
    );
}

#[test]
fn the_pod_runs_as_pod_security_restricted_asks_but_for_the_sysctl() {
    let m = manifests();
    let pod = &m.pod()["securityContext"];
    let container = &m.container()["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true);
    assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(container["readOnlyRootFilesystem"], true);
    assert_eq!(container["capabilities"]["drop"], json!(["ALL"]));
    // No port below 1024, so no NET_BIND_SERVICE.
    let config = config();
    let low = config["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["listen"].as_str().unwrap().parse::<SocketAddr>().unwrap())
        .any(|a| a.port() < 1024);
    assert!(!low);
    assert!(container["capabilities"].get("add").is_none());
    // The one sysctl, which the comment beside it says how to drop.
    assert_eq!(
        pod["sysctls"],
        json!([{ "name": "net.ipv4.tcp_migrate_req", "value": "1" }])
    );
    // The Dockerfile's user is the pod's.
    let user = instruction(&dockerfile(), "USER");
    assert_eq!(
        user,
        format!("{}:{}", pod["runAsUser"], pod["runAsGroup"]),
        "the image's USER and the pod's runAsUser:runAsGroup"
    );
}

#[test]
fn workers_auto_counts_a_whole_cpu_limit() {
    let m = manifests();
    assert_eq!(config()["runtime"]["workers"].as_str(), Some("auto"));
    let resources = &m.container()["resources"];
    // "auto" is the cgroup quota rounded down: a fraction of a CPU would
    // be paid for and not used by a worker.
    let cpu = resources["limits"]["cpu"].as_str().unwrap();
    let millis = match cpu.strip_suffix('m') {
        Some(m) => m.parse::<u64>().unwrap(),
        None => cpu.parse::<u64>().unwrap() * 1000,
    };
    assert!(
        millis >= 1000 && millis % 1000 == 0,
        "a whole CPU limit: {cpu}"
    );
    // Guaranteed QoS: requests are the limits.
    assert_eq!(resources["requests"], resources["limits"]);
}

#[test]
fn the_dockerfile_builds_dist_and_exposes_the_containers_ports() {
    let m = manifests();
    let dockerfile = dockerfile();
    assert!(dockerfile.contains("cargo build --profile dist --locked"));
    let entrypoint: Value = serde_json::from_str(&instruction(&dockerfile, "ENTRYPOINT")).unwrap();
    assert_eq!(
        entrypoint,
        json!(["/usr/bin/tini", "--", "/usr/local/bin/corral"])
    );
    let exposed: BTreeSet<u16> = instruction(&dockerfile, "EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let ports: BTreeSet<u16> = m.container()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap())
        .collect();
    assert_eq!(exposed, ports);
}

fn dockerfile() -> String {
    std::fs::read_to_string(format!("{ROOT}/deploy/docker/Dockerfile")).unwrap()
}

/// The argument of the Dockerfile's last `NAME` instruction (each of those
/// this test reads is written on one line).
fn instruction(dockerfile: &str, name: &str) -> String {
    dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .next_back()
        .unwrap_or_else(|| panic!("no {name} in the Dockerfile"))
        .trim()
        .to_owned()
}

// ---- the probes, run ----

/// How the probes' script opens its connection to the admin port.
fn loopback_connect(port: u16) -> String {
    format!("exec 3<>/dev/tcp/127.0.0.1/{port} ")
}

/// Runs `probe` (bash and its arguments) as kubelet would, with the pod's
/// environment reduced to the token, against the admin endpoint at `port`.
async fn probe(probe: &[String], config_port: u16, port: u16, token: &str) -> (bool, String) {
    let mut argv = probe.to_vec();
    let from = loopback_connect(config_port);
    assert!(argv[2].contains(&from));
    argv[2] = argv[2].replace(&from, &loopback_connect(port));
    let token = token.to_owned();
    tokio::task::spawn_blocking(move || {
        run(Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("CORRAL_ADMIN_TOKEN", token))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_probes_get_healthz_from_corral_on_the_shipped_config() {
    let m = manifests();
    let mut config = config();
    let shipped_admin: SocketAddr = config["admin"]["listen"].as_str().unwrap().parse().unwrap();
    // The shipped config on loopback ports of the test's choosing, its
    // upstream's name answered by a DNS server here (with no address: no
    // request goes anywhere), and the token in a file, since the test
    // cannot give corral an environment of its own.
    let token = "k8s-probe-token";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), token).unwrap();
    let admin = config["admin"].as_table_mut().unwrap();
    admin.insert("listen".into(), "127.0.0.1:0".into());
    admin.insert("token_file".into(), "admin.token".into());
    for listener in config["listeners"].as_array_mut().unwrap() {
        listener
            .as_table_mut()
            .unwrap()
            .insert("listen".into(), "127.0.0.1:0".into());
    }
    let dns = DnsServer::start().await;
    let mut resolver = toml::Table::new();
    resolver.insert("nameservers".into(), vec![dns.addr.to_string()].into());
    config.insert("resolver".into(), resolver.into());
    let path = dir.path().join("corral.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let corral = Corral::start_at(dir, path).await;
    let port = corral.admin.unwrap().port();

    let readiness = m.probe("readinessProbe");
    let liveness = m.probe("livenessProbe");
    let (ok, out) = probe(&readiness, shipped_admin.port(), port, token).await;
    assert!(ok, "readiness on a serving corral: {out}");
    let (ok, out) = probe(&liveness, shipped_admin.port(), port, token).await;
    assert!(ok, "liveness on a serving corral: {out}");
    // A wrong token fails, and says why in what kubelet reports.
    let (ok, out) = probe(&readiness, shipped_admin.port(), port, "not-the-token").await;
    assert!(!ok && out.contains("/healthz answered 401"), "{out}");
    drop(corral);
}
