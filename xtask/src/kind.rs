//! `cargo xtask kind up|deploy|bench|down [--dry-run]`: lb as a DaemonSet on a local kind cluster
//! whose kube-proxy is disabled, so every Service connection goes through lb.
//!
//! - `up`: the cluster `lb`, one control-plane node and two workers, `kubeProxyMode: "none"`.
//! - `deploy`: builds the image (`docker build -t lb:dev .`), loads it into the nodes, mounts bpffs
//!   on each node when it is not mounted, and applies `deploy/` through a generated overlay that
//!   sets the image and the API server's real address (with kube-proxy gone, nothing translates
//!   the `kubernetes` ClusterIP for the agent).
//! - `bench`: the kubia Service of `xtask/demo/kubia.yaml` with a three-pod Deployment behind it,
//!   and a client Job that opens one connection per request to its ClusterIP and reports which pods
//!   answered and the latency percentiles.
//! - `down`: deletes the cluster.
//!
//! (Longer than 600 lines: the four steps share their kind, docker and kubectl plumbing, and each
//! prints the exact command it runs, as the `--dry-run` mode shows.)
//!
//! Each action is one plan ([`plan`], a list of [`Step`]s). `--dry-run` prints it as a shell
//! script, with the files it writes and the manifests it applies, and runs nothing: it works on
//! machines without docker and kind. Without `--dry-run`, missing tools are named in one sentence.
//! Every kubectl command names the `kind-lb` context, never the current one.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::root;

/// The kind cluster's name; kind calls its nodes `lb-control-plane`, `lb-worker`, `lb-worker2`.
const CLUSTER: &str = "lb";
/// The kubeconfig context kind creates for [`CLUSTER`].
const CONTEXT: &str = "kind-lb";
/// The image `deploy` builds and loads into the nodes.
const IMAGE_NAME: &str = "lb";
const IMAGE_TAG: &str = "dev";
const WORKERS: usize = 2;
/// Scratch directory for generated files, relative to the workspace root (ignored by git and by
/// the Docker build context).
const WORK_DIR: &str = "target/kind";
/// The e2e test image: `serve-hostname` for the kubia pods, curl and a shell for the client.
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";
/// Requests the bench client sends, each on a new connection.
const BENCH_REQUESTS: u32 = 1000;

/// The seed's kubia Service and the EndpointSlice the demo gives the agent instead of an API
/// server; `bench` takes only the Service.
const DEMO_KUBIA: &str = include_str!("../demo/kubia.yaml");

/// The manifests `deploy` applies (through its overlay), shown by `--dry-run`.
const DEPLOY_MANIFESTS: [(&str, &str); 5] = [
    ("deploy/kustomization.yaml", include_str!("../../deploy/kustomization.yaml")),
    ("deploy/namespace.yaml", include_str!("../../deploy/namespace.yaml")),
    ("deploy/rbac.yaml", include_str!("../../deploy/rbac.yaml")),
    ("deploy/configmap.yaml", include_str!("../../deploy/configmap.yaml")),
    ("deploy/daemonset.yaml", include_str!("../../deploy/daemonset.yaml")),
];

#[derive(clap::Args)]
pub struct Args {
    /// What to do.
    #[arg(value_enum)]
    action: Action,
    /// Print the commands, the files and the manifests instead of running anything.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Create the kind cluster `lb` (1 control plane, 2 workers) with kube-proxy disabled.
    Up,
    /// Build the lb image, load it into the cluster and apply deploy/.
    Deploy,
    /// Run the kubia Service and a client Job; print which pods answered and the latency.
    Bench,
    /// Delete the kind cluster.
    Down,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Deploy => "deploy",
            Self::Bench => "bench",
            Self::Down => "down",
        }
    }
}

/// One step of a plan. Paths are relative to the workspace root, where commands run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write a file; `${VAR}` in it is replaced by an earlier [`Step::Capture`].
    Write { path: String, contents: String },
    /// A manifest the next `kubectl apply` sends; only printed (by `--dry-run`).
    Show { path: &'static str, contents: &'static str },
    /// Run a command.
    Run(Vec<String>),
    /// Run a command and keep its trimmed output as `${var}` for later steps.
    Capture { var: &'static str, argv: Vec<String> },
}

/// A command line from whitespace-separated words (none of the plans' words contain spaces,
/// except the `sh -c` script, which is built as a list).
fn cmd(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

fn kubectl(args: &str) -> Vec<String> {
    cmd(&format!("kubectl --context {CONTEXT} {args}"))
}

fn work_file(name: &str) -> String {
    format!("{WORK_DIR}/{name}")
}

fn node_names() -> Vec<String> {
    let mut nodes = vec![format!("{CLUSTER}-control-plane"), format!("{CLUSTER}-worker")];
    nodes.extend((2..=WORKERS).map(|i| format!("{CLUSTER}-worker{i}")));
    nodes
}

fn kind_config() -> String {
    let workers = "  - role: worker\n".repeat(WORKERS);
    format!(
        r#"# Written by `cargo xtask kind up`. kube-proxy is not deployed: Services work only through lb.
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  kubeProxyMode: "none"
nodes:
  - role: control-plane
{workers}"#
    )
}

/// `deploy/` with the image built here and the API server's address, as a kustomize overlay in
/// [`WORK_DIR`]`/overlay`.
fn overlay() -> String {
    let up = "../".repeat(Path::new(WORK_DIR).join("overlay").components().count());
    format!(
        r#"# Written by "cargo xtask kind deploy": deploy/ with the image built by "docker build" and the
# API server's address (the agent cannot use the kubernetes ClusterIP: kube-proxy is off).
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {up}deploy
images:
  - name: lb
    newName: {IMAGE_NAME}
    newTag: {IMAGE_TAG}
patches:
  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: lb-config
        namespace: lb-system
      data:
        api-server-host: "${{API_SERVER_HOST}}"
        api-server-port: "${{API_SERVER_PORT}}"
"#
    )
}

/// The first document of `xtask/demo/kubia.yaml` (the Service) without its comments and without
/// the `clusterIP` written in for the demo: here the API server assigns it.
fn kubia_service() -> String {
    let first = DEMO_KUBIA.split("\n---").next().unwrap_or_default();
    let mut service = String::from("# The kubia Service of xtask/demo/kubia.yaml; the API server assigns its ClusterIP.\n");
    for line in first.lines() {
        let t = line.trim_start();
        if !t.starts_with('#') && !t.starts_with("clusterIP:") {
            service.push_str(line);
            service.push('\n');
        }
    }
    service
}

fn kubia_manifests() -> String {
    format!(
        r#"{service}---
# Three pods answering HTTP on 8080 with their name, like the seed's kubia pods.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kubia
  namespace: default
spec:
  replicas: 3
  selector:
    matchLabels:
      app: kubia
  template:
    metadata:
      labels:
        app: kubia
    spec:
      containers:
        - name: kubia
          image: {AGNHOST}
          args: ["serve-hostname", "--http", "--port=8080"]
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet:
              path: /
              port: 8080
"#,
        service = kubia_service()
    )
}

/// The client: a ConfigMap holding the script (the kubelet would expand `$(...)` in a command)
/// and a Job running it once.
fn client_manifests() -> String {
    format!(
        r#"# The bench client: {BENCH_REQUESTS} sequential requests, one TCP connection each, to the kubia
# ClusterIP (from the variables the kubelet injects, so DNS is not involved).
apiVersion: v1
kind: ConfigMap
metadata:
  name: kubia-client
  namespace: default
data:
  bench.sh: |
    url="http://${{KUBIA_SERVICE_HOST}}:${{KUBIA_SERVICE_PORT}}/"
    i=0
    failed=0
    : > /tmp/results
    while [ "$i" -lt "$REQUESTS" ]; do
      if t=$(curl -sS -m 2 -o /tmp/body -w '%{{time_total}}' "$url"); then
        echo "$(cat /tmp/body) $t" >> /tmp/results
      else
        failed=$((failed + 1))
      fi
      i=$((i + 1))
    done
    echo "== $REQUESTS requests to $url (the kubia Service): $failed failed"
    echo "== Which pods answered"
    awk '{{ print $1 }}' /tmp/results | sort | uniq -c
    echo "== Latency per request, connection included (curl time_total, ms)"
    awk '{{ print $2 * 1000 }}' /tmp/results | sort -n | awk '
      function at(q,  i) {{ i = int(NR * q + 0.5); if (i < 1) i = 1; if (i > NR) i = NR; return v[i] }}
      {{ v[NR] = $1 }}
      END {{ if (NR) printf "p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", at(0.5), at(0.9), at(0.99), v[NR] }}'
    if [ "$failed" -eq 0 ]; then echo "== RESULT: ok"; else echo "== RESULT: $failed requests FAILED"; fi
---
apiVersion: batch/v1
kind: Job
metadata:
  name: kubia-client
  namespace: default
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: client
          image: {AGNHOST}
          command: ["/bin/sh", "/bench/bench.sh"]
          env:
            - name: REQUESTS
              value: "{BENCH_REQUESTS}"
          volumeMounts:
            - name: bench
              mountPath: /bench
      volumes:
        - name: bench
          configMap:
            name: kubia-client
"#
    )
}

/// What `cargo xtask kind <action>` does, in order.
pub fn plan(action: Action) -> Vec<Step> {
    let image = format!("{IMAGE_NAME}:{IMAGE_TAG}");
    match action {
        Action::Up => {
            let config = work_file("kind-config.yaml");
            vec![
                Step::Write { path: config.clone(), contents: kind_config() },
                Step::Run(cmd(&format!("kind create cluster --name {CLUSTER} --config {config} --wait 2m"))),
            ]
        }
        Action::Deploy => {
            let mut steps = vec![
                Step::Run(cmd(&format!("docker build -t {image} ."))),
                Step::Run(cmd(&format!("kind load docker-image {image} --name {CLUSTER}"))),
            ];
            // The hostPath /sys/fs/bpf must be a bpffs for the pins to outlive the agent; kind's
            // node containers do not necessarily mount one.
            for node in node_names() {
                let mut argv = cmd(&format!("docker exec {node} sh -c"));
                argv.push(r#"grep -q " /sys/fs/bpf bpf " /proc/mounts || mount -t bpf bpf /sys/fs/bpf"#.to_owned());
                steps.push(Step::Run(argv));
            }
            // Where the kubernetes Service really points: the API server's own address and port.
            let slice = "get endpointslices -n default -l kubernetes.io/service-name=kubernetes -o";
            steps.push(Step::Capture {
                var: "API_SERVER_HOST",
                argv: kubectl(&format!("{slice} jsonpath={{.items[0].endpoints[0].addresses[0]}}")),
            });
            steps.push(Step::Capture {
                var: "API_SERVER_PORT",
                argv: kubectl(&format!("{slice} jsonpath={{.items[0].ports[0].port}}")),
            });
            let overlay_dir = work_file("overlay");
            steps.push(Step::Write { path: format!("{overlay_dir}/kustomization.yaml"), contents: overlay() });
            steps.extend(DEPLOY_MANIFESTS.iter().map(|&(path, contents)| Step::Show { path, contents }));
            steps.push(Step::Run(kubectl(&format!("apply -k {overlay_dir}"))));
            steps.push(Step::Run(kubectl("-n lb-system rollout status daemonset/lb --timeout=3m")));
            steps
        }
        Action::Bench => {
            let kubia = work_file("kubia.yaml");
            let client = work_file("kubia-client.yaml");
            vec![
                // lb must be deployed: nothing else translates ClusterIPs in this cluster.
                Step::Run(kubectl("-n lb-system rollout status daemonset/lb --timeout=1m")),
                Step::Write { path: kubia.clone(), contents: kubia_manifests() },
                Step::Write { path: client.clone(), contents: client_manifests() },
                Step::Run(kubectl(&format!("apply -f {kubia}"))),
                Step::Run(kubectl("rollout status deployment/kubia --timeout=2m")),
                // A Job's pod template cannot change: start each bench with a new one.
                Step::Run(kubectl("delete job kubia-client --ignore-not-found --wait")),
                Step::Run(kubectl(&format!("apply -f {client}"))),
                Step::Run(kubectl("wait --for=condition=complete job/kubia-client --timeout=3m")),
                Step::Run(kubectl("logs job/kubia-client")),
            ]
        }
        Action::Down => vec![Step::Run(cmd(&format!("kind delete cluster --name {CLUSTER}")))],
    }
}

/// The programs a plan runs, docker and kind first (every action needs the kind cluster).
fn tools(steps: &[Step]) -> Vec<String> {
    let mut tools = vec!["docker".to_owned(), "kind".to_owned()];
    for step in steps {
        if let Step::Run(argv) | Step::Capture { argv, .. } = step
            && let Some(program) = argv.first()
            && !tools.contains(program)
        {
            tools.push(program.clone());
        }
    }
    tools
}

/// What keeps the plan from running here, e.g. `["kind is not installed"]`.
fn problems(tools: &[String]) -> Vec<String> {
    let mut problems: Vec<String> =
        tools.iter().filter(|t| !crate::setup::have(t)).map(|t| format!("{t} is not installed")).collect();
    if tools.iter().any(|t| t == "docker") && crate::setup::have("docker") {
        let daemon =
            Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !daemon {
            problems.push("the docker daemon is not reachable (`docker info` fails)".to_owned());
        }
    }
    problems
}

fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let steps = plan(args.action);
    let tools = tools(&steps);
    let problems = problems(&tools);
    if args.dry_run {
        print!("{}", script(args.action, &steps, &root(), &tools, &problems));
        return Ok(());
    }
    if !problems.is_empty() {
        bail!(
            "`cargo xtask kind {}` needs {}, but {}; add --dry-run to print what it would run instead",
            args.action.name(),
            and_list(&tools),
            and_list(&problems)
        );
    }
    execute(&steps)
}

/// Replaces `${VAR}` for every captured variable; a variable the plan captures later (or never)
/// is an error rather than an empty string.
fn substitute(text: &str, vars: &BTreeMap<&str, String>, pending: &[&str]) -> anyhow::Result<String> {
    let mut out = text.to_owned();
    for (var, value) in vars {
        out = out.replace(&format!("${{{var}}}"), value);
    }
    if let Some(var) = pending.iter().find(|v| out.contains(&format!("${{{v}}}"))) {
        bail!("plan error: ${{{var}}} is used before it is captured");
    }
    Ok(out)
}

fn captured_vars(steps: &[Step]) -> Vec<&'static str> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Capture { var, .. } => Some(*var),
            _ => None,
        })
        .collect()
}

fn execute(steps: &[Step]) -> anyhow::Result<()> {
    let root = root();
    let all_vars = captured_vars(steps);
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    for step in steps {
        let pending: Vec<&str> = all_vars.iter().copied().filter(|v| !vars.contains_key(v)).collect();
        match step {
            Step::Write { path, contents } => {
                let file = root.join(path);
                if let Some(dir) = file.parent() {
                    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                fs::write(&file, substitute(contents, &vars, &pending)?)
                    .with_context(|| format!("writing {}", file.display()))?;
                println!("kind: wrote {path}");
            }
            Step::Show { .. } => {}
            Step::Run(argv) => {
                println!("kind: $ {}", shell_line(argv));
                let status = Command::new(&argv[0])
                    .args(&argv[1..])
                    .current_dir(&root)
                    .status()
                    .with_context(|| format!("running {}", argv[0]))?;
                if !status.success() {
                    bail!("`{}` failed ({status})", shell_line(argv));
                }
            }
            Step::Capture { var, argv } => {
                let out = Command::new(&argv[0])
                    .args(&argv[1..])
                    .current_dir(&root)
                    .stderr(Stdio::inherit())
                    .output()
                    .with_context(|| format!("running {}", argv[0]))?;
                let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if !out.status.success() || value.is_empty() {
                    bail!("`{}` gave no value for {var} ({})", shell_line(argv), out.status);
                }
                println!("kind: {var}={value}");
                vars.insert(var, value);
            }
        }
    }
    Ok(())
}

fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

fn shell_line(argv: &[String]) -> String {
    argv.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" ")
}

/// The plan as a shell script: what `--dry-run` prints.
fn script(action: Action, steps: &[Step], root: &Path, tools: &[String], problems: &[String]) -> String {
    let vars = captured_vars(steps);
    let mut out = String::new();
    let name = action.name();
    let _ = writeln!(out, "# `cargo xtask kind {name} --dry-run`: what `cargo xtask kind {name}` would run. Nothing was run.");
    let _ = writeln!(
        out,
        "# Needs {}{}.",
        and_list(tools),
        if problems.is_empty() { String::new() } else { format!("; on this machine {}", and_list(problems)) }
    );
    let _ = writeln!(out, "set -eu\ncd {}", sh_quote(&root.display().to_string()));
    let mut dirs: Vec<&str> = Vec::new();
    for step in steps {
        match step {
            Step::Write { path, contents } => {
                if let Some(dir) = Path::new(path).parent().and_then(Path::to_str)
                    && !dir.is_empty()
                    && !dirs.contains(&dir)
                {
                    dirs.push(dir);
                    let _ = writeln!(out, "mkdir -p {}", sh_quote(dir));
                }
                // Unquoted heredoc only when the file uses a captured variable (the shell fills it
                // in, as `execute` does); otherwise the text is literal.
                let expands = vars.iter().any(|v| contents.contains(&format!("${{{v}}}")));
                let delimiter = if expands { "EOF" } else { "'EOF'" };
                let _ = writeln!(out, "cat > {} <<{delimiter}\n{}EOF", sh_quote(path), contents);
            }
            Step::Show { path, contents } => {
                let _ = writeln!(out, "# --- {path} (applied through the overlay by the next command):");
                for line in contents.lines() {
                    let _ = writeln!(out, "#   {line}");
                }
            }
            Step::Run(argv) => {
                let _ = writeln!(out, "{}", shell_line(argv));
            }
            Step::Capture { var, argv } => {
                let _ = writeln!(out, "{var}=$({})", shell_line(argv));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Run(argv) => Some(argv.join(" ")),
                _ => None,
            })
            .collect()
    }

    fn written<'a>(steps: &'a [Step], path: &str) -> &'a str {
        steps
            .iter()
            .find_map(|s| match s {
                Step::Write { path: p, contents } if p == path => Some(contents.as_str()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("the plan writes {path}"))
    }

    #[test]
    fn up_creates_a_cluster_without_kube_proxy_and_two_workers() {
        let steps = plan(Action::Up);
        let config = written(&steps, "target/kind/kind-config.yaml");
        assert!(config.contains("networking:\n  kubeProxyMode: \"none\"\n"), "{config}");
        assert_eq!(config.matches("- role: worker").count(), 2, "{config}");
        assert_eq!(config.matches("- role: control-plane").count(), 1, "{config}");
        assert_eq!(runs(&steps), ["kind create cluster --name lb --config target/kind/kind-config.yaml --wait 2m"]);
        let script = script(Action::Up, &steps, Path::new("/repo"), &tools(&steps), &[]);
        assert!(script.contains("kubeProxyMode: \"none\""), "the dry run prints the kind config");
    }

    #[test]
    fn deploy_builds_loads_and_applies_deploy_with_its_rbac() {
        let steps = plan(Action::Deploy);
        let runs = runs(&steps);
        let position = |prefix: &str| {
            runs.iter().position(|r| r.starts_with(prefix)).unwrap_or_else(|| panic!("the plan runs `{prefix}...`: {runs:#?}"))
        };
        let build = position("docker build -t lb:dev .");
        let load = position("kind load docker-image lb:dev --name lb");
        let apply = position("kubectl --context kind-lb apply -k target/kind/overlay");
        assert!(build < load && load < apply, "build, load, then apply: {runs:#?}");
        for node in ["lb-control-plane", "lb-worker", "lb-worker2"] {
            assert!(position(&format!("docker exec {node} ")) < apply, "bpffs on {node} before the apply");
        }
        // The overlay is deploy/ (so the RBAC in it) with the local image and the API server.
        let overlay = written(&steps, "target/kind/overlay/kustomization.yaml");
        assert!(overlay.contains("resources:\n  - ../../../deploy\n"), "{overlay}");
        assert!(overlay.contains("newName: lb\n    newTag: dev"), "{overlay}");
        assert!(overlay.contains("api-server-host: \"${API_SERVER_HOST}\""), "{overlay}");
        let kustomization = DEPLOY_MANIFESTS[0].1;
        assert!(kustomization.contains("- rbac.yaml"), "deploy/ applies rbac.yaml");
        let rbac = steps
            .iter()
            .find_map(|s| match s {
                Step::Show { path: "deploy/rbac.yaml", contents } => Some(*contents),
                _ => None,
            })
            .expect("the dry run shows deploy/rbac.yaml");
        for kind in ["kind: ServiceAccount", "kind: ClusterRole", "kind: ClusterRoleBinding"] {
            assert!(rbac.contains(kind), "rbac.yaml has a {kind}");
        }
        let script = script(Action::Deploy, &steps, Path::new("/repo"), &tools(&steps), &[]);
        assert!(script.contains("\nkubectl --context kind-lb apply -k target/kind/overlay\n"), "{script}");
        assert!(script.contains("#   kind: ClusterRole\n"), "the dry run prints the RBAC it applies");
        assert!(script.contains("API_SERVER_HOST=$(kubectl --context kind-lb get endpointslices"), "{script}");
    }

    #[test]
    fn captured_variables_are_captured_before_use_and_only_ones_expanded() {
        for action in [Action::Up, Action::Deploy, Action::Bench, Action::Down] {
            let steps = plan(action);
            let vars = captured_vars(&steps);
            let mut seen = Vec::new();
            for step in &steps {
                match step {
                    Step::Capture { var, .. } => seen.push(*var),
                    Step::Write { path, contents } => {
                        let uses: Vec<&str> = vars.iter().copied().filter(|v| contents.contains(&format!("${{{v}}}"))).collect();
                        for v in &uses {
                            assert!(seen.contains(v), "{path} uses ${{{v}}} before it is captured");
                        }
                        if !uses.is_empty() {
                            // The dry run's unquoted heredoc must expand nothing else.
                            let mut rest = contents.clone();
                            for v in &uses {
                                rest = rest.replace(&format!("${{{v}}}"), "");
                            }
                            assert!(!rest.contains(['$', '`', '\\']), "{path}: only ${{VAR}} may be special");
                        }
                    }
                    Step::Run(argv) => assert!(!argv.iter().any(|a| a.contains("${")), "{argv:?}"),
                    Step::Show { .. } => {}
                }
            }
        }
        let vars = BTreeMap::from([("API_SERVER_HOST", "172.18.0.3".to_owned())]);
        assert_eq!(
            substitute("h: \"${API_SERVER_HOST}\" ${KUBIA_SERVICE_HOST}", &vars, &["API_SERVER_PORT"]).unwrap(),
            "h: \"172.18.0.3\" ${KUBIA_SERVICE_HOST}"
        );
        assert!(substitute("p: ${API_SERVER_PORT}", &vars, &["API_SERVER_PORT"]).is_err());
    }

    #[test]
    fn bench_uses_the_demo_service_without_its_demo_cluster_ip() {
        let service = kubia_service();
        for needle in ["kind: Service", "name: kubia", "port: 80", "targetPort: 8080", "app: kubia"] {
            assert!(service.contains(needle), "{needle}: {service}");
        }
        assert!(!service.contains("clusterIP"), "the API server assigns the ClusterIP: {service}");
        assert!(!service.contains("EndpointSlice"), "the EndpointSlice controller writes those");
        let steps = plan(Action::Bench);
        let runs = runs(&steps);
        assert_eq!(runs[0], "kubectl --context kind-lb -n lb-system rollout status daemonset/lb --timeout=1m");
        assert!(runs.contains(&"kubectl --context kind-lb apply -f target/kind/kubia.yaml".to_owned()));
        assert!(runs.last().is_some_and(|r| r == "kubectl --context kind-lb logs job/kubia-client"));
        let client = written(&steps, "target/kind/kubia-client.yaml");
        assert!(client.contains("kind: Job") && client.contains("${KUBIA_SERVICE_HOST}"), "{client}");
    }

    #[test]
    fn every_kubectl_names_the_kind_context_and_tools_are_listed() {
        for action in [Action::Up, Action::Deploy, Action::Bench, Action::Down] {
            let steps = plan(action);
            for step in &steps {
                if let Step::Run(argv) | Step::Capture { argv, .. } = step
                    && argv[0] == "kubectl"
                {
                    assert_eq!(argv[1..3], ["--context", "kind-lb"], "{argv:?}");
                }
            }
            let tools = tools(&steps);
            assert_eq!(tools[..2], ["docker", "kind"], "{action:?}");
        }
        assert_eq!(tools(&plan(Action::Deploy)), ["docker", "kind", "kubectl"]);
        assert_eq!(and_list(&["docker".into(), "kind".into(), "kubectl".into()]), "docker, kind and kubectl");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("target/kind/overlay"), "target/kind/overlay");
        assert_eq!(sh_quote("jsonpath={.items[0]}"), "'jsonpath={.items[0]}'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
