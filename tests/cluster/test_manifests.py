"""cluster/: KubeRay manifests, PVC, Dockerfile and runtime env, checked without Kubernetes.

Nothing here talks to a cluster. The manifests are parsed with yaml.safe_load_all and checked
against a table of the KubeRay ray.io/v1 CRD fields (ray-operator/apis/ray/v1/*_types.go: a field
without `omitempty` is required by the CRD's OpenAPI schema) and of the core Kubernetes kinds used
here (Secret, NetworkPolicy), against pyproject.toml's pins, and against the recipes they run
(config loads, paths on the PVC, custom resources and placement fit the nodes the manifest
declares). The security settings are checked too: hardened securityContext on every container,
Ray token auth from the Secret in every Ray container, and the NetworkPolicies, evaluated on the
labels KubeRay gives the pods.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from lcray.actors.placement import PlacementError, check_feasible, plan_placement, sum_resources
from lcray.config import LcrayConfig, load_config

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PVC_NAME = "lcray-data"
# Recipes the long-lived cluster/raycluster.yaml is documented (cluster/README.md) to run.
RAYCLUSTER_RECIPES = (
    "recipes/qwen2.5-7b-solopo.yaml",
    "recipes/qwen2.5-7b-solopo-colocated.yaml",
    "recipes/llama3-8b-logo.yaml",
)


def _pin(name: str, deps: list[str]) -> str:
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no {name}==X in {deps}")


PROJECT = PYPROJECT["project"]
VERSION = PROJECT["version"]
RAY_VERSION = _pin("ray", PROJECT["dependencies"])
TORCH_VERSION = _pin("torch", PROJECT["dependencies"])
DEEPSPEED_VERSION = _pin("deepspeed", PROJECT["dependencies"])
VLLM_VERSION = _pin("vllm", PROJECT["optional-dependencies"]["gpu"])
IMAGE = f"lcray-gpu:{VERSION}"

# ----------------------------------------------------------------------------- the KubeRay v1 schema
# required: the CRD rejects the object without them (plus what lcray's manifests must set, marked).
# known: every field the CRD defines at that level, so a misspelt key (silently pruned by the API
# server) fails here instead of being ignored on the cluster.
SCHEMA = {
    "RayClusterSpec": {
        "required": ["headGroupSpec", "workerGroupSpecs", "rayVersion"],  # workerGroupSpecs, rayVersion: ours
        "known": {
            "headGroupSpec",
            "workerGroupSpecs",
            "rayVersion",
            "enableInTreeAutoscaling",
            "autoscalerOptions",
            "headServiceAnnotations",
            "suspend",
            "managedBy",
            "gcsFaultToleranceOptions",
            "upgradeStrategy",
            "authOptions",
        },
    },
    "HeadGroupSpec": {
        "required": ["rayStartParams", "template.spec.containers"],
        "known": {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"},
    },
    "WorkerGroupSpec": {
        "required": [
            "groupName",
            "replicas",
            "minReplicas",
            "maxReplicas",
            "rayStartParams",
            "template.spec.containers",
        ],
        "known": {
            "groupName",
            "replicas",
            "minReplicas",
            "maxReplicas",
            "idleTimeoutSeconds",
            "numOfHosts",
            "rayStartParams",
            "template",
            "scaleStrategy",
            "suspend",
            "resources",
            "labels",
        },
    },
    "AuthOptions": {  # raycluster_types.go, KubeRay >= 1.6.0 (secretName)
        "required": ["mode", "secretName"],  # ours: token auth with our Secret, not an operator-made one
        "known": {"mode", "secretName", "enableK8sTokenAuth"},
    },
    "SubmitterPodTemplate": {  # a corev1.PodTemplateSpec
        "required": [
            "spec.containers",
            "spec.restartPolicy",
        ],  # restartPolicy: ours (a Job's pod needs Never/OnFailure)
        "known": {"metadata", "spec"},
    },
    # ---- core Kubernetes kinds (k8s.io/api: core/v1/types.go, networking/v1/types.go)
    "Secret": {
        "required": ["apiVersion", "kind", "metadata.name", "type", "stringData"],  # stringData: ours (a template)
        "known": {"apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable"},
    },
    "NetworkPolicySpec": {
        "required": ["podSelector", "policyTypes", "ingress"],  # policyTypes, ingress: ours (explicit)
        "known": {"podSelector", "policyTypes", "ingress", "egress"},
    },
    "NetworkPolicyIngressRule": {"required": ["from"], "known": {"from", "ports"}},  # from: ours (never "anyone")
    "NetworkPolicyPeer": {"required": [], "known": {"podSelector", "namespaceSelector", "ipBlock"}},
    "NetworkPolicyPort": {"required": ["protocol", "port"], "known": {"protocol", "port", "endPort"}},
    "LabelSelector": {"required": [], "known": {"matchLabels", "matchExpressions"}},
    "RayJobSpec": {
        # the CRD itself requires none; a RayJob without these would not run lcray or would leak GPUs
        "required": [
            "entrypoint",
            "runtimeEnvYAML",
            "submissionMode",
            "shutdownAfterJobFinishes",
            "ttlSecondsAfterFinished",
        ],
        "one_of": ["rayClusterSpec", "clusterSelector"],
        "known": {
            "activeDeadlineSeconds",
            "backoffLimit",
            "rayClusterSpec",
            "submitterPodTemplate",
            "metadata",
            "clusterSelector",
            "submitterConfig",
            "managedBy",
            "deletionStrategy",
            "entrypoint",
            "runtimeEnvYAML",
            "jobId",
            "submissionMode",
            "entrypointResources",
            "entrypointNumCpus",
            "entrypointNumGpus",
            "ttlSecondsAfterFinished",
            "shutdownAfterJobFinishes",
            "suspend",
            "schedule",
        },
    },
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _schema_errors(obj: dict, kind: str) -> list[str]:
    rules = SCHEMA[kind]
    errors = [f"{kind}: missing required {key}" for key in rules["required"] if _get(obj, key) in (None, "", [])]
    if "one_of" in rules and sum(k in obj for k in rules["one_of"]) != 1:
        errors.append(f"{kind}: needs exactly one of {rules['one_of']}, has {[k for k in rules['one_of'] if k in obj]}")
    errors += [f"{kind}: unknown field {key!r} (not in the ray.io/v1 CRD)" for key in sorted(set(obj) - rules["known"])]
    return errors


# ----------------------------------------------------------------------------- loading the folder
def _load(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


YAML_FILES = sorted(p for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".yml"))
LOAD_ERRORS: dict[str, str] = {}  # a broken file fails its parse test below, not the whole collection
DOCS: dict[str, list] = {}
for _path in YAML_FILES:
    try:
        DOCS[_path.name] = _load(_path)
    except yaml.YAMLError as _e:
        LOAD_ERRORS[_path.name], DOCS[_path.name] = str(_e), []


def _objects(kind: str) -> list[tuple[str, dict]]:
    return [
        (f"{name}:{d['metadata']['name']}", d)
        for name, docs in DOCS.items()
        for d in docs
        if isinstance(d, dict) and d.get("kind") == kind
    ]


RAY_CLUSTERS = _objects("RayCluster")
RAY_JOBS = _objects("RayJob")
NETWORK_POLICIES = _objects("NetworkPolicy")
SECRETS = _objects("Secret")
# Every RayClusterSpec: the RayCluster's spec and each RayJob's rayClusterSpec.
CLUSTER_SPECS = [(label, d["spec"]) for label, d in RAY_CLUSTERS] + [
    (label, d["spec"]["rayClusterSpec"]) for label, d in RAY_JOBS if "rayClusterSpec" in d["spec"]
]


def _groups(spec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) for the head ("head") and every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


RAY_PODS = [(f"{label}/{group}", g["template"]["spec"]) for label, spec in CLUSTER_SPECS for group, g in _groups(spec)]
SUBMITTER_PODS = [
    (f"{label}/submitter", d["spec"]["submitterPodTemplate"]["spec"])
    for label, d in RAY_JOBS
    if "submitterPodTemplate" in d["spec"]
]
ALL_PODS = RAY_PODS + SUBMITTER_PODS + [(label, d["spec"]) for label, d in _objects("Pod")]
# Every container that runs Ray (a node or a Ray client): each Ray pod's Ray container (KubeRay:
# containers[0]) and each RayJob submitter's.
RAY_CONTAINERS = [(label, pod["containers"][0]) for label, pod in RAY_PODS + SUBMITTER_PODS]


def _ids(params: list[tuple[str, object]]) -> list[str]:
    return [label for label, _ in params]


def _recipe_of(job: dict) -> tuple[Path, Path]:
    """(script, --config file) of a RayJob entrypoint `python <script> --config <file> [overrides]`."""
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] in ("python", "python3") and argv[1].endswith(".py"), argv
    assert "--config" in argv, f"entrypoint has no --config: {argv}"
    return REPO / argv[1], REPO / argv[argv.index("--config") + 1]


# ----------------------------------------------------------------------------- Ray nodes from a manifest
def _cpu(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def parse_ray_resources(value: str) -> dict[str, float]:
    """rayStartParams.resources as KubeRay documents it: '"{\\"name\\": 8}"' — a JSON object in
    escaped double quotes, which `ray start --resources=...` gets through a shell."""
    s = value.strip()
    assert len(s) > 2 and s[0] == s[-1] == '"', f"resources must be written '\"{{...}}\"' (quoted JSON), got {value!r}"
    return {k: float(v) for k, v in json.loads(s[1:-1].replace('\\"', '"')).items()}


def ray_nodes(spec: dict) -> list[dict[str, float]]:
    """The Ray resources each pod of a RayClusterSpec declares (KubeRay: num-cpus / num-gpus from
    rayStartParams, else from the container's cpu and nvidia.com/gpu limits; custom ones from
    rayStartParams.resources), one entry per replica."""
    nodes = []
    for _, group in _groups(spec):
        params = group.get("rayStartParams") or {}
        limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        node = {
            "CPU": _cpu(params.get("num-cpus", limits.get("cpu", 0))),
            "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
        }
        if "resources" in params:
            node.update(parse_ray_resources(params["resources"]))
        node = {k: v for k, v in node.items() if v > 0}
        nodes += [node] * int(group.get("replicas", 1))
    return nodes


# ============================================================================= tests
def test_cluster_folder_has_the_expected_files():
    kinds = {name: sorted({d.get("kind") for d in docs if isinstance(d, dict)}) for name, docs in DOCS.items()}
    assert kinds["raycluster.yaml"] == ["RayCluster"]
    assert kinds["rayjob-solopo.yaml"] == kinds["rayjob-logo.yaml"] == ["RayJob"]
    assert kinds["pvc.yaml"] == ["PersistentVolumeClaim"]
    assert kinds["data-loader.yaml"] == ["Pod"]
    assert kinds["ray-auth-secret.yaml"] == ["Secret"]
    assert kinds["networkpolicy.yaml"] == ["NetworkPolicy"]
    assert kinds["runtime_env.yaml"] == [None]  # a Ray runtime env, not a Kubernetes object
    for name in ("Dockerfile", "README.md"):
        assert (CLUSTER / name).is_file(), name


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.name for p in YAML_FILES])
def test_every_yaml_parses_and_k8s_objects_are_named(path):
    assert path.name not in LOAD_ERRORS, LOAD_ERRORS.get(path.name)
    docs = _load(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is a {type(doc).__name__}, not a mapping"
        if path.name == "runtime_env.yaml":
            continue
        # a Secret carries its payload in data/stringData, every other kind here a spec
        body = {"data", "stringData"} & set(doc) if doc.get("kind") == "Secret" else {"spec"} & set(doc)
        assert {"apiVersion", "kind", "metadata"} <= set(doc) and body, f"{path.name}: {sorted(doc)}"
        assert DNS1123.fullmatch(doc["metadata"]["name"]), doc["metadata"]["name"]


@pytest.mark.parametrize("label, obj", RAY_CLUSTERS + RAY_JOBS, ids=_ids(RAY_CLUSTERS + RAY_JOBS))
def test_kuberay_objects_use_ray_io_v1(label, obj):
    assert obj["apiVersion"] == "ray.io/v1"


@pytest.mark.parametrize("label, spec", CLUSTER_SPECS, ids=_ids(CLUSTER_SPECS))
def test_ray_cluster_spec_matches_the_crd(label, spec):
    errors = _schema_errors(spec, "RayClusterSpec") + _schema_errors(spec["headGroupSpec"], "HeadGroupSpec")
    names = []
    for group in spec["workerGroupSpecs"]:
        errors += _schema_errors(group, "WorkerGroupSpec")
        names.append(group["groupName"])
        assert DNS1123.fullmatch(group["groupName"]), group["groupName"]
        counts = [group[k] for k in ("minReplicas", "replicas", "maxReplicas")]
        assert all(isinstance(c, int) and not isinstance(c, bool) for c in counts), counts
        assert counts[0] <= counts[1] <= counts[2], f"{group['groupName']}: need min <= replicas <= max, got {counts}"
    assert not errors, errors
    assert len(names) == len(set(names)), f"duplicate groupName: {names}"
    for group_name, group in _groups(spec):
        params = group["rayStartParams"]
        # map[string]string in the CRD: `num-gpus: 0` (an int) is rejected by the API server
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), (group_name, params)
        containers = group["template"]["spec"]["containers"]
        assert all(c.get("name") and c.get("image") for c in containers), containers


@pytest.mark.parametrize("label, job", RAY_JOBS, ids=_ids(RAY_JOBS))
def test_rayjob_spec_matches_the_crd(label, job):
    spec = job["spec"]
    assert not _schema_errors(spec, "RayJobSpec"), _schema_errors(spec, "RayJobSpec")
    assert spec["submissionMode"] == "K8sJobMode" and spec["submissionMode"] in SUBMISSION_MODES
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 3600
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env.get("working_dir"), runtime_env
    assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values()), runtime_env


@pytest.mark.parametrize("label, spec", CLUSTER_SPECS, ids=_ids(CLUSTER_SPECS))
def test_ray_version_matches_pyproject(label, spec):
    assert spec["rayVersion"] == RAY_VERSION == "2.60.0"


@pytest.mark.parametrize("label, pod", ALL_PODS, ids=_ids(ALL_PODS))
def test_images_are_the_lcray_gpu_image_of_this_version(label, pod):
    for c in pod["containers"]:
        image = c["image"]
        assert image == IMAGE or image.endswith("/" + IMAGE), f"{label}: {image!r} is not [registry/]{IMAGE}"


@pytest.mark.parametrize("label, pod", RAY_PODS, ids=_ids(RAY_PODS))
def test_every_ray_pod_mounts_dev_shm_and_the_pvc(label, pod):
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]["name"]]
    assert shm.get("emptyDir", {}).get("medium") == "Memory", shm
    data = volumes[mounts["/data"]["name"]]
    assert data["persistentVolumeClaim"]["claimName"] == PVC_NAME
    assert not mounts["/data"].get("readOnly", False)  # checkpoints and logs are written there


def test_pvc_is_shared_read_write_many():
    (pvc,) = DOCS["pvc.yaml"]
    assert pvc["apiVersion"] == "v1" and pvc["metadata"]["name"] == PVC_NAME
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # head and both GPU nodes mount it at once
    assert pvc["spec"]["resources"]["requests"]["storage"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, pod in ALL_PODS
        for v in pod.get("volumes", [])  # the RayJob submitters mount nothing
        if "persistentVolumeClaim" in v
    }
    assert claims == {PVC_NAME}


@pytest.mark.parametrize("label, spec", CLUSTER_SPECS, ids=_ids(CLUSTER_SPECS))
def test_gpu_workers_request_gpus_and_the_head_none(label, spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == 8, (group["groupName"], limits)
        if "num-gpus" in group["rayStartParams"]:
            assert int(group["rayStartParams"]["num-gpus"]) == int(limits["nvidia.com/gpu"])


@pytest.mark.parametrize("label, pod", RAY_PODS, ids=_ids(RAY_PODS))
def test_ray_pods_set_nccl_and_offline_env(label, pod):
    env_list = pod["containers"][0]["env"]
    assert all(isinstance(e.get("value"), str) for e in env_list if "valueFrom" not in e), (
        env_list
    )  # EnvVar.value is a string
    env = {e["name"]: e.get("value") for e in env_list}
    assert env["NCCL_DEBUG"] == "WARN" and env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_IB_DISABLE"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TORCH_EXTENSIONS_DIR"] == "/data/cache/torch_extensions"


def test_solopo_cluster_declares_the_two_pools():
    solopo = [(label, spec) for label, spec in CLUSTER_SPECS if not label.startswith("rayjob-logo.yaml")]
    assert len(solopo) == 2  # raycluster.yaml and rayjob-solopo.yaml
    for label, spec in solopo:
        declared = {
            g["groupName"]: parse_ray_resources(g["rayStartParams"]["resources"]) for g in spec["workerGroupSpecs"]
        }
        assert declared == {"rollout": {"rollout_pool": 8.0}, "learner": {"learner_pool": 8.0}}, label


def test_logo_job_is_a_single_gpu_node():
    (spec,) = [s for label, s in CLUSTER_SPECS if "rayjob-logo" in label]
    assert [(g["groupName"], g["replicas"]) for g in spec["workerGroupSpecs"]] == [("gpu", 1)]
    assert ray_nodes(spec) == [{}, {"CPU": 48.0, "GPU": 8.0}]  # head: 0 CPUs, 0 GPUs for actors


@pytest.mark.parametrize("label, job", RAY_JOBS, ids=_ids(RAY_JOBS))
def test_rayjob_entrypoint_script_and_config_exist_and_load(label, job):
    script, config = _recipe_of(job)
    assert script.is_file(), script
    assert config.is_file(), config
    cfg = load_config(config)
    assert isinstance(cfg, LcrayConfig)
    expected = {"solopo.py": "orpo", "logo.py": "logo"}[script.name]  # the recipe matches the script
    assert cfg.algo.loss_type == expected
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    # working_dir is the code baked into the image (the Dockerfile's WORKDIR) or a remote URI
    wd = runtime_env["working_dir"]
    assert wd == _dockerfile_workdir() or re.match(r"(https|s3|gs)://", wd), wd


# (cluster spec, recipe config it runs): each RayJob's own config; the RayCluster's documented ones.
CASES = [
    (f"{label}|{_recipe_of(job)[1].relative_to(REPO)}", (job["spec"]["rayClusterSpec"], _recipe_of(job)[1]))
    for label, job in RAY_JOBS
] + [(f"{label}|{recipe}", (d["spec"], REPO / recipe)) for label, d in RAY_CLUSTERS for recipe in RAYCLUSTER_RECIPES]


@pytest.mark.parametrize("label, case", CASES, ids=_ids(CASES))
def test_worker_resources_cover_the_recipe_node_resources(label, case):
    spec, config = case
    pl = load_config(config).placement
    wanted = {r for r in (pl.rollout_node_resource, pl.learner_node_resource) if r}
    declared = {k for n in ray_nodes(spec) for k in n} - {"CPU", "GPU"}
    assert wanted <= declared, f"{config.name} pins actors to {sorted(wanted)}; the workers declare {sorted(declared)}"


@pytest.mark.parametrize("label, case", CASES, ids=_ids(CASES))
def test_recipe_placement_fits_the_manifest_nodes(label, case):
    spec, config = case
    nodes = ray_nodes(spec)
    check_feasible(plan_placement(load_config(config)), sum_resources(nodes), nodes)  # raises PlacementError if not


def test_feasibility_check_catches_a_node_without_the_pool():
    (spec,) = [s for label, s in CLUSTER_SPECS if "rayjob-solopo" in label]
    nodes = [{k: v for k, v in n.items() if k != "rollout_pool"} for n in ray_nodes(spec)]
    with pytest.raises(PlacementError, match="no node declares 'rollout_pool'"):
        check_feasible(
            plan_placement(load_config(REPO / "recipes/qwen2.5-7b-solopo.yaml")), sum_resources(nodes), nodes
        )


_INPUTS = (
    "model.name_or_path",
    "model.tokenizer_path",
    "data.train_path",
    "data.eval_path",
    "solopo.pairs_path",
    "scorer.reward_model_path",
)
_OUTPUTS = ("trainer.output_dir", "ckpt.path", "logging.logdir", "logo_data.output_dir", "data.output_dir")


@pytest.mark.parametrize("label, case", CASES, ids=_ids(CASES))
def test_recipe_paths_live_on_the_pvc_in_every_pod(label, case):
    spec, config = case
    cfg = load_config(config)
    for group, g in _groups(spec):
        pod = g["template"]["spec"]
        pvc_volumes = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] in pvc_volumes]
        for key in _INPUTS + _OUTPUTS:
            value = _cfg_get(cfg, key)
            if value is None or (key == "logo_data.output_dir" and cfg.algo.loss_type != "logo"):
                continue
            path = PurePosixPath(value)
            # a relative path would land in each node's own working dir, not on the shared volume
            assert path.is_absolute(), f"{config.name}: {key}={value!r} must be an absolute path on the PVC"
            on = [m for m in mounts if path.is_relative_to(m["mountPath"])]
            assert on, (
                f"{config.name}: {key}={value} is on no PVC mount of {group} ({[m['mountPath'] for m in mounts]})"
            )
            if key in _OUTPUTS:
                assert not any(m.get("readOnly") for m in on), f"{key}={value} is on a read-only mount in {group}"


def _cfg_get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# ----------------------------------------------------------------------------- Dockerfile
DOCKERFILE = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
_DOCKER_LINES = [
    ln for ln in re.sub(r"\\\n", " ", DOCKERFILE).splitlines() if ln.strip() and not ln.lstrip().startswith("#")
]


def _dockerfile_workdir() -> str:
    (workdir,) = [ln.split()[1] for ln in _DOCKER_LINES if ln.startswith("WORKDIR")]
    return workdir


def test_dockerfile_base_and_pins_match_pyproject():
    (base,) = [ln.split()[1] for ln in _DOCKER_LINES if ln.startswith("FROM")]
    m = re.fullmatch(r"(rayproject/ray:(?P<ray>[\d.]+)-py3\d+-gpu|nvidia/cuda:[\w.-]*runtime[\w.-]*)", base)
    assert m, f"base image {base!r}: expected rayproject/ray:<ray>-py3xx-gpu or an nvidia/cuda runtime image"
    if m.group("ray"):
        assert m.group("ray") == RAY_VERSION
    runs = " ".join(ln for ln in _DOCKER_LINES if ln.startswith("RUN"))
    pins = dict(re.findall(r"\b(torch|vllm|deepspeed|ray(?:\[\w+\])?)==([\w.]+)", runs))
    assert pins.get("torch") == TORCH_VERSION
    assert pins.get("vllm") == VLLM_VERSION
    assert pins.get("deepspeed") == DEEPSPEED_VERSION
    if not m.group("ray"):  # on a CUDA base, Ray must be installed at the pinned version
        assert pins.get("ray[default]", pins.get("ray")) == RAY_VERSION
    # torch is installed before the rest so vLLM/DeepSpeed keep its CUDA build
    assert runs.index(f"torch=={TORCH_VERSION}") < runs.index(f"vllm=={VLLM_VERSION}")
    assert "--index-url" not in runs and "download.pytorch.org/whl/cpu" not in runs  # no CPU torch
    assert re.search(r"\bDS_BUILD_OPS=0\b", DOCKERFILE)
    assert re.search(r"pip install [\"']?(/app|\.)\[gpu\]", runs), "lcray must be installed with its gpu extra"
    # the build fails if pip resolved other versions: its check lists exactly pyproject's pins
    want = re.search(r"want = \(([^)]*)\)", runs)
    assert want and [v.strip(" '\"") for v in want.group(1).split(",")] == [
        TORCH_VERSION,
        VLLM_VERSION,
        DEEPSPEED_VERSION,
        RAY_VERSION,
        VERSION,
    ]
    assert re.search(rf'org\.opencontainers\.image\.version="{re.escape(VERSION)}"', DOCKERFILE)


def test_dockerfile_copies_lcray_to_app_and_bakes_in_no_weights():
    copies = [ln.split() for ln in _DOCKER_LINES if ln.startswith(("COPY", "ADD"))]
    assert any(parts[-1] == "/app" and parts[-2] == "." for parts in copies), copies
    assert _dockerfile_workdir() == "/app"
    lowered = DOCKERFILE.lower()
    for forbidden in ("snapshot_download", "huggingface-cli download", "hf download", ".safetensors", "git lfs"):
        assert forbidden not in lowered, f"Dockerfile must not fetch or copy model weights ({forbidden!r})"
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", "outputs"} <= set(ignore)


# ----------------------------------------------------------------------------- runtime envs
def _driver_env_keys() -> set[str]:
    """Env var keys lcray's driver passes to ray.init(runtime_env=...) when it joins a cluster."""
    from lcray.runtime import ACTOR_ENV

    return set(ACTOR_ENV) | {"TORCH_EXTENSIONS_DIR", "LCRAY_CACHE", "VLLM_CPU_KVCACHE_SPACE"}


def test_runtime_env_file_for_ray_job_submit():
    (env,) = DOCS["runtime_env.yaml"]
    assert env["working_dir"] == "."
    assert {".venv", "outputs", ".cache", ".git"} <= set(env["excludes"])
    env_vars = env["env_vars"]
    assert all(isinstance(v, str) for v in env_vars.values()), env_vars  # Ray requires str -> str
    assert env_vars["HF_HUB_OFFLINE"] == "1" and env_vars["TOKENIZERS_PARALLELISM"] == "false"
    assert env_vars["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env_vars["TORCH_EXTENSIONS_DIR"] == "/data/cache/torch_extensions"


RUNTIME_ENVS = [("runtime_env.yaml", DOCS["runtime_env.yaml"][0])] + [
    (label, yaml.safe_load(job["spec"]["runtimeEnvYAML"])) for label, job in RAY_JOBS
]


@pytest.mark.parametrize("label, env", RUNTIME_ENVS, ids=_ids(RUNTIME_ENVS))
def test_runtime_envs_let_the_lcray_driver_join(label, env):
    """Ray refuses ray.init(runtime_env=...) in a job whose runtime env shares an env var key with
    it unless RAY_OVERRIDE_JOB_RUNTIME_ENV=1 (tests/cluster/test_runtime_env_submit.py shows it)."""
    env_vars = env.get("env_vars", {})
    shared = set(env_vars) & _driver_env_keys()
    assert not shared or env_vars.get("RAY_OVERRIDE_JOB_RUNTIME_ENV") == "1", (
        f'{label}: env_vars {sorted(shared)} are also set by lcray\'s driver; add RAY_OVERRIDE_JOB_RUNTIME_ENV: "1"'
    )
    assert env_vars.get("RAY_OVERRIDE_JOB_RUNTIME_ENV") == "1"  # keep it, so adding a shared key stays safe


# ----------------------------------------------------------------------------- security: pods
def _dockerfile_user() -> tuple[int, int]:
    """(uid, gid) of the image's last `USER uid:gid`, the user every pod runs as."""
    users = [ln.split()[1] for ln in _DOCKER_LINES if ln.startswith("USER")]
    m = re.fullmatch(r"(\d+):(\d+)", users[-1]) if users else None
    assert m, f"the Dockerfile must end as a numeric non-root USER uid:gid (runAsNonRoot checks it), got {users}"
    return int(m.group(1)), int(m.group(2))


def test_dockerfile_creates_and_switches_to_the_non_root_user():
    uid, gid = _dockerfile_user()
    assert uid != 0 and gid != 0
    runs = " ".join(ln for ln in _DOCKER_LINES if ln.startswith("RUN"))
    # the user is created where the base lacks it, with exactly these ids, and loses passwordless sudo
    assert re.search(rf"useradd\b[^;&|]*--uid {uid}\b[^;&|]*--gid {gid}\b", runs), "no useradd with the pods' ids"
    assert f'= "{uid}:{gid}"' in runs, "the build must fail when the user's ids differ from the manifests'"
    assert re.search(r"/etc/sudoers", runs)
    # what the pods write is owned by it: /app (the code, COPY) and /data (mount point + caches)
    chown = re.search(rf"chown -R {uid}:{gid} ([^;&|]*)", runs)
    assert chown and {"/app", "/data"} <= set(chown.group(1).split()), chown
    copies = [ln.split() for ln in _DOCKER_LINES if ln.startswith("COPY")]
    assert any(f"--chown={uid}:{gid}" in parts and parts[-1] == "/app" for parts in copies), copies
    # nothing after the last USER switches back to root
    last_user = max(i for i, ln in enumerate(_DOCKER_LINES) if ln.startswith("USER"))
    assert all(i <= last_user for i, ln in enumerate(_DOCKER_LINES) if ln.startswith("USER"))
    env_dirs = re.findall(r"TORCH_EXTENSIONS_DIR=(\S+)", DOCKERFILE)
    assert env_dirs and all(d.startswith("/data/") for d in env_dirs), env_dirs  # a cache the user can write


def _containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


@pytest.mark.parametrize("label, pod", ALL_PODS, ids=_ids(ALL_PODS))
def test_every_container_runs_hardened(label, pod):
    """Pod and container securityContext: the image's non-root user, no privilege escalation, no
    capabilities, the runtime's default seccomp profile (what the `restricted` Pod Security
    Standard asks; KubeRay copies the Ray container's securityContext into the init container it adds)."""
    uid, gid = _dockerfile_user()
    psc = pod.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True, (label, psc)
    assert (psc.get("runAsUser"), psc.get("runAsGroup"), psc.get("fsGroup")) == (uid, gid, gid), (label, psc)
    assert psc.get("seccompProfile") == {"type": "RuntimeDefault"}, (label, psc)
    for c in _containers(pod):
        sc = c.get("securityContext") or {}
        where = f"{label}/{c.get('name')}"
        assert sc.get("runAsNonRoot") is True, (where, sc)
        assert sc.get("runAsUser", uid) == uid and sc.get("runAsGroup", gid) == gid, (where, sc)
        assert sc.get("allowPrivilegeEscalation") is False, (where, sc)
        assert sc.get("privileged", False) is False, (where, sc)
        assert sc.get("capabilities") == {"drop": ["ALL"]}, (where, sc)  # nothing added back
        assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, (where, sc)
        assert not any("hostPort" in p for p in c.get("ports", [])), (where, c.get("ports"))


# volume types the `restricted` Pod Security Standard allows
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.mark.parametrize("label, pod", ALL_PODS, ids=_ids(ALL_PODS))
def test_pods_use_no_host_namespaces_or_host_volumes(label, pod):
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), label
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        assert kinds <= _RESTRICTED_VOLUMES, f"{label}: volume {v['name']} is {sorted(kinds)}"


# ----------------------------------------------------------------------------- security: Ray token auth
(SECRET,) = [d for _, d in SECRETS]
SECRET_NAME = SECRET["metadata"]["name"]
TOKEN_KEY = "auth_token"  # the key KubeRay's authOptions.secretName reads (utils.RAY_AUTH_TOKEN_SECRET_KEY)


def test_auth_secret_is_a_template_with_the_key_kuberay_reads():
    assert not _schema_errors(SECRET, "Secret"), _schema_errors(SECRET, "Secret")
    assert SECRET["apiVersion"] == "v1" and SECRET["type"] == "Opaque"
    assert SECRET_NAME == "lcray-ray-auth"
    assert set(SECRET["stringData"]) == {TOKEN_KEY} and "data" not in SECRET
    # a placeholder, never a real token in the repository
    assert "REPLACE" in SECRET["stringData"][TOKEN_KEY]
    readme = (CLUSTER / "README.md").read_text(encoding="utf-8")
    create = re.search(rf"kubectl create secret generic {SECRET_NAME} --from-literal={TOKEN_KEY}=(\S+)", readme)
    assert create and "openssl rand" in readme[create.start() : create.end() + 40], "README: no kubectl create secret"


@pytest.mark.parametrize("label, container", RAY_CONTAINERS, ids=_ids(RAY_CONTAINERS))
def test_every_ray_container_has_token_auth_from_the_secret(label, container):
    env = container.get("env", [])
    names = [e["name"] for e in env]
    assert names.count("RAY_AUTH_MODE") == names.count("RAY_AUTH_TOKEN") == 1, (label, names)
    by_name = {e["name"]: e for e in env}
    assert by_name["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, by_name["RAY_AUTH_MODE"]
    token = by_name["RAY_AUTH_TOKEN"]
    assert "value" not in token, f"{label}: the token must come from the Secret, not be written in the manifest"
    assert token["valueFrom"] == {"secretKeyRef": {"name": SECRET_NAME, "key": TOKEN_KEY}}, token
    assert "RAY_AUTH_TOKEN_PATH" not in names  # RAY_AUTH_TOKEN wins anyway; one source, no ambiguity


@pytest.mark.parametrize("label, spec", CLUSTER_SPECS, ids=_ids(CLUSTER_SPECS))
def test_the_operator_gets_the_same_token(label, spec):
    """authOptions.secretName: KubeRay (>= 1.6.0) reads the token from our Secret for its own
    dashboard client (it polls RayJob status) instead of generating another token."""
    auth = spec.get("authOptions")
    assert auth, f"{label}: no authOptions"
    assert not _schema_errors(auth, "AuthOptions"), _schema_errors(auth, "AuthOptions")
    assert auth == {"mode": "token", "secretName": SECRET_NAME}, auth


@pytest.mark.parametrize("label, job", RAY_JOBS, ids=_ids(RAY_JOBS))
def test_rayjob_submitter_is_labelled_and_left_to_kuberay(label, job):
    """The submitter pod template exists so that it gets the token, the hardening and the client
    label the NetworkPolicy admits; its command is KubeRay's (`ray job submit` + the entrypoint)."""
    tpl = job["spec"].get("submitterPodTemplate")
    assert tpl, f"{label}: without submitterPodTemplate KubeRay's default submitter has no token"
    assert not _schema_errors(tpl, "SubmitterPodTemplate"), _schema_errors(tpl, "SubmitterPodTemplate")
    assert tpl["spec"]["restartPolicy"] == "Never"
    assert tpl["metadata"]["labels"] == {"lcray/ray-client": "true"}
    (container,) = tpl["spec"]["containers"]
    assert "command" not in container and "args" not in container  # KubeRay fills in `ray job submit ...`


@pytest.mark.parametrize("label, env", RUNTIME_ENVS, ids=_ids(RUNTIME_ENVS))
def test_no_runtime_env_carries_the_token(label, env):
    """A job's runtime env is stored in the GCS and shown by the job API / dashboard in clear."""
    assert not {k for k in env.get("env_vars", {}) if k.startswith("RAY_AUTH")}, env


_DISABLE_AUTH = re.compile(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", re.IGNORECASE)


def _text_files() -> list[Path]:
    return [REPO / "README.md"] + sorted(p for p in CLUSTER.iterdir() if p.is_file())


@pytest.mark.parametrize("path", _text_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_tells_users_to_disable_auth(path):
    text = path.read_text(encoding="utf-8")
    hits = [ln.strip() for ln in text.splitlines() if _DISABLE_AUTH.search(ln)]
    assert not hits, f"{path.relative_to(REPO)} tells users to turn Ray token auth off: {hits}"
    if path.suffix == ".yaml":
        for doc in _load(path):
            for env in _walk_env(doc):
                if env.get("name") == "RAY_AUTH_MODE":
                    assert env.get("value") == "token", (path.name, env)
            for auth in _walk_key(doc, "authOptions"):
                assert auth.get("mode") == "token", (path.name, auth)


def _walk_key(obj, key: str):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk_key(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_key(v, key)


def _walk_env(obj):
    for env_list in _walk_key(obj, "env"):
        yield from (e for e in env_list if isinstance(e, dict))


# ----------------------------------------------------------------------------- security: NetworkPolicy
NAMESPACE = "lcray-ns"  # the manifests name none: everything lands in the namespace they are applied to
CLIENT_LABEL = {"lcray/ray-client": "true"}
HEAD_PORTS = {("TCP", 8265), ("TCP", 10001), ("TCP", 6379)}  # dashboard / job API, Ray client, GCS
OPERATOR_PORTS = {("TCP", 8265)}  # the KubeRay operator polls a RayJob's status on the dashboard
ALL = "all ports"


def _ray_cluster_pods(kind: str, name: str, spec: dict) -> list[tuple[str, dict]]:
    """(group, labels) of the pods KubeRay creates for a RayClusterSpec: the template's labels plus
    its own (common/pod.go labelPod; ray.io/cluster, ray.io/node-type, ray.io/group cannot be
    overridden). A RayJob's cluster is named <job>-<5 random characters>."""
    cluster = name if kind == "RayCluster" else f"{name}-q7x2k"
    pods = []
    for group, g in _groups(spec):
        labels = {"app.kubernetes.io/name": "kuberay", **((g["template"].get("metadata") or {}).get("labels") or {})}
        labels.update(
            {
                "ray.io/cluster": cluster,
                "ray.io/node-type": "head" if group == "head" else "worker",
                "ray.io/group": "headgroup" if group == "head" else group,
                "ray.io/is-ray-node": "yes",
                "app.kubernetes.io/created-by": "kuberay-operator",
            }
        )
        pods.append((group, labels))
    return pods


CLUSTER_PODS = {
    label: _ray_cluster_pods(
        d["kind"], d["metadata"]["name"], d["spec"] if d["kind"] == "RayCluster" else d["spec"]["rayClusterSpec"]
    )
    for label, d in RAY_CLUSTERS + RAY_JOBS
}


def _selector_matches(selector: dict, labels: dict) -> bool:
    """A metav1.LabelSelector; {} matches everything."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer_rule: dict, namespace: str, ns_labels: dict, labels: dict) -> bool:
    """A NetworkPolicyPeer: podSelector alone = pods of the policy's namespace; namespaceSelector
    (with or without podSelector) = pods of the namespaces it selects; ipBlock is not modelled."""
    if "ipBlock" in peer_rule:
        return False
    if "namespaceSelector" in peer_rule:
        ns_ok = _selector_matches(peer_rule["namespaceSelector"], ns_labels)
    else:
        ns_ok = namespace == NAMESPACE
    return ns_ok and _selector_matches(peer_rule.get("podSelector") or {}, labels)


def _selecting(pod_labels: dict) -> list[dict]:
    return [
        d
        for _, d in NETWORK_POLICIES
        if "Ingress" in d["spec"].get("policyTypes", ["Ingress"])
        and _selector_matches(d["spec"]["podSelector"], pod_labels)
    ]


def allowed_ingress(pod_labels: dict, namespace: str, peer_labels: dict, ns_labels: dict | None = None):
    """The (protocol, port)s a peer may open on the pod (ALL = any port), per Kubernetes'
    NetworkPolicy semantics: a pod no policy selects is open; otherwise the union of the rules of
    the policies that select it, a rule without `from` admitting any peer, without `ports` any port."""
    policies = _selecting(pod_labels)
    if not policies:
        return ALL
    ns_labels = ns_labels if ns_labels is not None else {"kubernetes.io/metadata.name": namespace}
    ports: set[tuple[str, int]] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if peers and not any(_peer_matches(p, namespace, ns_labels, peer_labels) for p in peers):
                continue
            if not rule.get("ports"):
                return ALL
            ports |= {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}
    return ports


@pytest.mark.parametrize("label, policy", NETWORK_POLICIES, ids=_ids(NETWORK_POLICIES))
def test_network_policy_matches_the_schema(label, policy):
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    spec = policy["spec"]
    errors = _schema_errors(spec, "NetworkPolicySpec") + _schema_errors(spec["podSelector"], "LabelSelector")
    assert spec["policyTypes"] == ["Ingress"], spec["policyTypes"]
    for rule in spec["ingress"]:
        errors += _schema_errors(rule, "NetworkPolicyIngressRule")
        for peer in rule["from"]:
            errors += _schema_errors(peer, "NetworkPolicyPeer")
            assert peer and "ipBlock" not in peer, peer  # by label only, never by address
            for sel in (peer.get("podSelector"), peer.get("namespaceSelector")):
                if sel is not None:
                    errors += _schema_errors(sel, "LabelSelector")
                    # label values are strings: `true` unquoted is a YAML bool the API server rejects
                    assert all(isinstance(v, str) for v in (sel.get("matchLabels") or {}).values()), sel
        for port in rule.get("ports", []):
            errors += _schema_errors(port, "NetworkPolicyPort")
            assert port["protocol"] == "TCP" and isinstance(port["port"], int) and "endPort" not in port, port
    assert all(isinstance(v, str) for v in (spec["podSelector"].get("matchLabels") or {}).values())
    assert not errors, errors
    # it selects pods of some lcray Ray cluster (a misspelt label would select nothing, silently)
    assert any(_selector_matches(spec["podSelector"], lb) for pods in CLUSTER_PODS.values() for _, lb in pods), label


@pytest.mark.parametrize("label", sorted(CLUSTER_PODS))
def test_network_policy_lets_in_only_the_cluster_and_labelled_clients(label):
    pods = CLUSTER_PODS[label]
    (head,) = [lb for group, lb in pods if group == "head"]
    workers = [lb for group, lb in pods if group != "head"]
    for group, lb in pods:
        assert _selecting(lb), f"{label}/{group}: no NetworkPolicy selects it, every pod may reach it"
    # the cluster's own pods: everything, both ways (GCS, raylets, object transfer, NCCL)
    for _, target in pods:
        for _, source in pods:
            assert allowed_ingress(target, NAMESPACE, source) == ALL
    # labelled clients (the RayJob submitters): the head's three ports, nothing on the workers
    assert allowed_ingress(head, NAMESPACE, CLIENT_LABEL) == HEAD_PORTS
    # the KubeRay operator, from its own namespace: the dashboard only
    operator = {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/component": "kuberay-operator"}
    assert allowed_ingress(head, "kuberay-system", operator) == OPERATOR_PORTS
    for worker in workers:
        assert allowed_ingress(worker, NAMESPACE, CLIENT_LABEL) == set()
        assert allowed_ingress(worker, "kuberay-system", operator) == set()
    # everyone else: nothing, anywhere
    outsiders = [
        (NAMESPACE, {"app": "something-else"}),
        (NAMESPACE, {}),
        ("other-ns", CLIENT_LABEL),  # a "client" of another namespace
        (NAMESPACE, {"ray.io/cluster": "another", "ray.io/node-type": "head", "lcray/cluster": "another"}),
    ]
    # ... including the pods of the OTHER lcray clusters
    outsiders += [
        (NAMESPACE, lb) for other, other_pods in CLUSTER_PODS.items() if other != label for _, lb in other_pods
    ]
    for _, target in pods:
        for namespace, source in outsiders:
            assert allowed_ingress(target, namespace, source) == set(), (label, target, namespace, source)


def test_network_policy_evaluator_knows_an_open_pod():
    """The evaluator itself: a pod no policy selects is open to everyone (what the tests above rule out)."""
    assert allowed_ingress({"app": "unrelated"}, NAMESPACE, {}) == ALL
    assert allowed_ingress(CLUSTER_PODS[sorted(CLUSTER_PODS)[0]][0][1], NAMESPACE, {}) == set()
