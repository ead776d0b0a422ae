//! `marsc deploy k8s PLAN…` (SPEC 10.6): Kubernetes manifests for plans, so that an existing
//! scheduler pools machines across a cluster. Per plan: a ConfigMap holding the plan and the
//! hosts file of its timely cluster, a headless Service that gives each process a stable name,
//! a StatefulSet with one pod per plan worker (pod `i` is process `i`), and, for a served
//! single-process plan, a HorizontalPodAutoscaler on the admission backlog `marsc serve`
//! exports (`mars_queue_depth`). Two PriorityClasses, `mars-online` and `mars-offline`, let
//! online pods preempt offline ones. Resource requests come from the plan's `budget` (cores,
//! memory) and its GPU placements.
//!
//! The manifests are a pure function of the plans and the flags ([`manifests`]): the same
//! input gives the same bytes. Nothing here talks to a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{miette, IntoDiagnostic, WrapErr};
use serde_json::{json, Value as Json};

use mars_plan::{Device, Plan};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(clap::Subcommand)]
pub enum Which {
    /// Kubernetes manifests (YAML, one document per object) for one or more plans.
    K8s(K8sArgs),
}

#[derive(clap::Args, Clone)]
pub struct K8sArgs {
    /// Compiled plans; each becomes one StatefulSet.
    #[arg(required = true)]
    pub plans: Vec<PathBuf>,
    /// The container image: it holds `marsc` on its PATH and the pipelines' folders under
    /// `--app-dir`, laid out as beside the plans here (exec programs, weights).
    #[arg(long, default_value = "mars:latest")]
    pub image: String,
    /// `online` (served; preempts offline pods) or `offline` (batch; yields to online).
    #[arg(long, value_enum, default_value_t = Priority::Online)]
    pub priority: Priority,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Where the pipelines' folders are inside the image.
    #[arg(long, default_value = "/app")]
    pub app_dir: String,
    /// Autoscale a served single-process plan between 1 and this many pods.
    #[arg(long, default_value_t = 8)]
    pub max_pods: u32,
    /// The admission backlog per pod the autoscaler aims at (requests in `mars_queue_depth`).
    #[arg(long, default_value_t = 64)]
    pub backlog_per_pod: u32,
    /// Write here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Priority {
    Online,
    Offline,
}

/// The port every process of a plan's cluster listens on.
const CLUSTER_PORT: u16 = 7100;
const HTTP_PORT: u16 = 8000;
const GRPC_PORT: u16 = 8001;

pub fn run(args: Args) -> miette::Result<ExitCode> {
    match args.which {
        Which::K8s(a) => k8s(a),
    }
}

fn k8s(args: K8sArgs) -> miette::Result<ExitCode> {
    let mut plans = Vec::new();
    for path in &args.plans {
        let (plan, _) = super::run::load_plan(path)?;
        let text = std::fs::read_to_string(path)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot read {}", path.display()))?;
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plan.yaml".into());
        let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
        plans.push(Deployed {
            plan,
            text,
            file,
            folder: folder.to_string_lossy().replace('\\', "/"),
        });
    }
    let docs = manifests(&plans, &args).map_err(|e| miette!(code = "mars::deploy::plan", "{e}"))?;
    let text = to_yaml(&docs);
    match &args.output {
        Some(p) => std::fs::write(p, text)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot write {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One plan to deploy: the plan, its file's text, its file name and its folder (relative to
/// where the pipelines live in the image, `/`-separated).
pub struct Deployed {
    pub plan: Plan,
    pub text: String,
    pub file: String,
    pub folder: String,
}

/// The manifests as YAML documents separated by `---`.
pub fn to_yaml(docs: &[Json]) -> String {
    docs.iter()
        .map(|d| {
            format!(
                "---\n{}",
                serde_yaml::to_string(d).expect("JSON values serialize")
            )
        })
        .collect()
}

/// A Kubernetes name: lower-case letters, digits and `-`.
fn dns_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out = out.trim_matches('-').to_string();
    if out.is_empty() {
        out = "plan".into();
    }
    out.truncate(40);
    out
}

/// Every manifest for `plans`, in a fixed order: the two PriorityClasses, then per plan its
/// ConfigMap, Service, StatefulSet and (served, one process) HorizontalPodAutoscaler.
pub fn manifests(plans: &[Deployed], args: &K8sArgs) -> Result<Vec<Json>, String> {
    let mut docs = vec![
        json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "mars-online", "labels": {"app.kubernetes.io/part-of": "mars"}},
            "value": 100000, "preemptionPolicy": "PreemptLowerPriority", "globalDefault": false,
            "description": "Mars pipelines serving online requests: preempt offline pods when they need the room."
        }),
        json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "mars-offline", "labels": {"app.kubernetes.io/part-of": "mars"}},
            "value": 1000, "preemptionPolicy": "Never", "globalDefault": false,
            "description": "Mars batch pipelines: run on what online pods leave, never preempt."
        }),
    ];
    let mut names = BTreeSet::new();
    for d in plans {
        let name = format!("mars-{}", dns_name(&d.plan.pipeline));
        if !names.insert(name.clone()) {
            return Err(format!(
                "two plans deploy as `{name}` (pipeline `{}`); deploy pipelines of distinct names",
                d.plan.pipeline
            ));
        }
        docs.extend(plan_manifests(d, &name, args)?);
    }
    Ok(docs)
}

/// What one pod asks for: the most any of the plan's workers needs (every pod of a
/// StatefulSet has one template).
fn resources(plan: &Plan) -> Json {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let cpus = plan.budget.iter().map(|b| b.cpus).fold(0.0, f64::max);
    if cpus > 0.0 {
        requests.insert(
            "cpu".to_string(),
            json!(format!("{}m", (cpus * 1000.0).round() as u64)),
        );
    }
    let mem = plan
        .budget
        .iter()
        .filter_map(|b| b.memory_mb)
        .fold(0.0, f64::max);
    if mem > 0.0 {
        let mi = json!(format!("{}Mi", mem.ceil() as u64));
        requests.insert("memory".to_string(), mi.clone());
        limits.insert("memory".to_string(), mi);
    }
    // GPUs: the distinct GPUs the plan's nodes use on each worker; the most on one worker.
    let mut gpus: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for n in plan.nodes.iter().filter(|n| n.device == Device::Gpu) {
        gpus.entry(n.worker.as_str())
            .or_default()
            .insert(n.gpu.as_deref().unwrap_or("gpu"));
    }
    let mut per_resource: BTreeMap<String, usize> = BTreeMap::new();
    for used in gpus.values() {
        let mut here: BTreeMap<String, usize> = BTreeMap::new();
        for g in used {
            *here.entry(gpu_resource(plan, g)).or_default() += 1;
        }
        for (k, v) in here {
            let e = per_resource.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    for (k, v) in per_resource {
        limits.insert(k, json!(v.to_string()));
    }
    let mut r = serde_json::Map::new();
    if !requests.is_empty() {
        r.insert("requests".into(), json!(requests));
    }
    if !limits.is_empty() {
        r.insert("limits".into(), json!(limits));
    }
    Json::Object(r)
}

/// The extended resource a GPU of the plan is asked for by: a MIG instance
/// (`nvidia.com/mig-1g.18gb`) where the plan places nodes on one, else a whole GPU.
fn gpu_resource(plan: &Plan, gpu: &str) -> String {
    let mig = plan.gpu_shares.iter().find_map(|s| {
        let on = plan.node(&s.node).and_then(|n| n.gpu.as_deref()) == Some(gpu);
        on.then_some(s.mig.as_deref()).flatten()
    });
    match mig {
        Some(profile) => format!("nvidia.com/mig-{profile}"),
        None => "nvidia.com/gpu".to_string(),
    }
}

fn plan_manifests(d: &Deployed, name: &str, args: &K8sArgs) -> Result<Vec<Json>, String> {
    let plan = &d.plan;
    // A plan without a `workers` list numbers its workers as they first appear (SPEC 3.10).
    let mut workers: Vec<&str> = plan.workers.iter().map(String::as_str).collect();
    if workers.is_empty() {
        for n in &plan.nodes {
            if !workers.contains(&n.worker.as_str()) {
                workers.push(&n.worker);
            }
        }
    }
    let processes = workers.len().max(1);
    let serve = args.priority == Priority::Online;
    if serve && processes > 1 {
        return Err(format!(
            "plan `{}` runs on {processes} workers, but `marsc serve` runs a plan in one process (SPEC 8.4); deploy it with --priority offline (a `marsc run` cluster) or compile it for one worker",
            plan.pipeline
        ));
    }
    let ns = &args.namespace;
    let labels = json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mars", "mars.pipeline": dns_name(&plan.pipeline)});
    let hosts: String = (0..processes)
        .map(|i| format!("{name}-{i}.{name}.{ns}.svc.cluster.local:{CLUSTER_PORT}\n"))
        .collect();
    let dir = if d.folder.is_empty() {
        args.app_dir.trim_end_matches('/').to_string()
    } else {
        format!(
            "{}/{}",
            args.app_dir.trim_end_matches('/'),
            d.folder.trim_start_matches("./")
        )
    };
    let plan_path = format!("{dir}/{}", d.file);
    let elastic = if plan.budget.is_empty() { "off" } else { "on" };
    let script = if serve {
        format!("exec marsc serve {plan_path} --http 0.0.0.0:{HTTP_PORT} --grpc 0.0.0.0:{GRPC_PORT} --elastic {elastic}")
    } else {
        format!(
            "i=\"${{HOSTNAME##*-}}\"; if [ \"$i\" = 0 ]; then while [ ! -f /data/requests.jsonl ]; do sleep 5; done; marsc run {plan_path} --hosts /etc/mars/hosts --cluster-secret /etc/mars-secret/token --input /data/requests.jsonl --output /data/records.jsonl --resume -q --elastic {elastic} --stats-json /data/stats.json; exec sleep infinity; else exec marsc worker {plan_path} --hosts /etc/mars/hosts --cluster-secret /etc/mars-secret/token --process \"$i\"; fi"
        )
    };
    let mut ports = vec![json!({"name": "cluster", "containerPort": CLUSTER_PORT})];
    if serve {
        ports.push(json!({"name": "http", "containerPort": HTTP_PORT}));
        ports.push(json!({"name": "grpc", "containerPort": GRPC_PORT}));
    }
    let mut mounts = vec![
        json!({"name": "plan", "mountPath": plan_path, "subPath": "plan.yaml", "readOnly": true}),
        json!({"name": "plan", "mountPath": "/etc/mars/hosts", "subPath": "hosts", "readOnly": true}),
    ];
    let mut volumes = vec![json!({"name": "plan", "configMap": {"name": format!("{name}-plan")}})];
    let mut claims = Vec::new();
    if !serve {
        mounts.push(json!({"name": "secret", "mountPath": "/etc/mars-secret", "readOnly": true}));
        mounts.push(json!({"name": "data", "mountPath": "/data"}));
        volumes.push(json!({"name": "secret", "secret": {"secretName": format!("{name}-token"), "defaultMode": 0o400}}));
        claims.push(json!({
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }));
    }
    let mut container = json!({
        "name": "marsc",
        "image": args.image,
        "command": ["sh", "-c", script],
        "ports": ports,
        "volumeMounts": mounts,
        "env": [{"name": "MARS_LOG", "value": "info"}],
        "resources": resources(plan),
    });
    if serve {
        container["readinessProbe"] =
            json!({"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT}, "periodSeconds": 2});
        container["livenessProbe"] =
            json!({"httpGet": {"path": "/v2/health/live", "port": HTTP_PORT}, "periodSeconds": 10});
    }
    let scrape = if serve { "true" } else { "false" };
    let priority = if serve { "mars-online" } else { "mars-offline" };
    let mut spec = json!({
        "serviceName": name,
        "replicas": processes,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        "template": {
            "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": scrape, "prometheus.io/port": HTTP_PORT.to_string()}},
            "spec": {
                "priorityClassName": priority,
                "terminationGracePeriodSeconds": 40,
                "containers": [container],
                "volumes": volumes,
            }
        }
    });
    if !claims.is_empty() {
        spec["volumeClaimTemplates"] = json!(claims);
    }
    let mut service_ports = vec![json!({"name": "cluster", "port": CLUSTER_PORT})];
    if serve {
        service_ports.push(json!({"name": "http", "port": HTTP_PORT}));
        service_ports.push(json!({"name": "grpc", "port": GRPC_PORT}));
    }
    let meta = |n: String| json!({"name": n, "namespace": ns, "labels": labels});
    let mut docs = vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(format!("{name}-plan")),
               "data": {"plan.yaml": d.text, "hosts": hosts}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(name.to_string()),
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": true,
                        "selector": {"app.kubernetes.io/name": name}, "ports": service_ports}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta(name.to_string()), "spec": spec}),
    ];
    if serve {
        docs.push(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": meta(name.to_string()),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name},
                "minReplicas": 1, "maxReplicas": args.max_pods.max(1),
                "metrics": [{
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "mars_queue_depth", "selector": {"matchLabels": {"pipeline": plan.pipeline}}},
                        "target": {"type": "AverageValue", "averageValue": args.backlog_per_pod.to_string()}
                    }
                }],
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]},
                    "scaleDown": {"stabilizationWindowSeconds": 120, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}
                }
            }
        }));
    }
    Ok(docs)
}
