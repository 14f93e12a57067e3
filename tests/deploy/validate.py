"""Validate the deployment files: `python -m tests.deploy.validate [k8s|compose|all]` (`make k8s-validate`).

k8s: renders every overlay, and every optional component on top of the cpu overlay, with
`kubectl kustomize`; validates each built-in object with kubernetes-validate (strict, against
Kubernetes K8S_VERSION); reports each CRD kind (no schema there) and checks it here instead;
then checks what a schema cannot: references resolve, probes are native gRPC on the serving
port (exec probes of the TLS-aware health check where TLS is on), pods are non-root with a
read-only root filesystem, selectors select something, and each overlay requests the GPU
resources it promises.

compose: `deploy/docker-compose.yml` (interpolated, as `docker compose config` does) against
the compose specification (the strict `compose_spec` parser), then its wiring: depends_on
targets, healthchecks, build targets in the Dockerfile, and the Prometheus scrape targets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

from services.common import compose

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.32.0"
MODEL_SERVICES = ("encoder", "decoder", "llm-eval", "surrogate")
GPU_RESOURCE = {  # overlay -> the resource prefix every model service must request (None: no GPU)
    "cpu": None,
    "gpu-node": "nvidia.com/gpu",
    "gpu-node-sonar": "nvidia.com/gpu",
    "gpu-mig": "nvidia.com/mig-",
    "gpu-timeslice": "nvidia.com/gpu.shared",
}


def render(kustomization_dir: Path) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(kustomization_dir)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {kustomization_dir}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_with_component(overlay: Path, component: Path) -> list[dict]:
    # kustomize takes relative paths only, so the temporary kustomization sits beside the overlays.
    with tempfile.TemporaryDirectory(dir=K8S, prefix=".validate-") as tmp:
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(overlay, tmp)],
                    "components": [os.path.relpath(component, tmp)],
                }
            )
        )
        return render(Path(tmp))


def _name(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def schema_problems(objects: list[dict], version: str = K8S_VERSION) -> tuple[list[str], list[str]]:
    """(problems, notes): strict schema errors; one note per CRD object checked here instead."""
    problems, notes = [], []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{_name(obj)}: {exc.message} (at {where or 'top level'})")
        except kubernetes_validate.SchemaNotFoundError:
            check = CRD_CHECKS.get((obj.get("apiVersion"), obj.get("kind")))
            if check is None:
                problems.append(f"{_name(obj)}: no schema for {obj.get('apiVersion')} in Kubernetes {version}")
                continue
            notes.append(f"{_name(obj)}: CRD kind {obj['apiVersion']}, not in the Kubernetes schema; checked here")
            problems += check(obj, objects)
    return problems, notes


def _matches(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _service_monitor(obj: dict, objects: list[dict]) -> list[str]:
    services = [o for o in objects if o["kind"] == "Service"]
    selected = [s for s in services if _matches(obj["spec"]["selector"], s["metadata"].get("labels", {}))]
    if not selected:
        return [f"{_name(obj)}: selector matches no Service"]
    problems = []
    for endpoint in obj["spec"]["endpoints"]:
        for service in selected:
            if endpoint["port"] not in {p.get("name") for p in service["spec"]["ports"]}:
                problems.append(f"{_name(obj)}: {_name(service)} has no port named {endpoint['port']!r}")
    return problems


CRD_CHECKS = {("monitoring.coreos.com/v1", "ServiceMonitor"): _service_monitor}


def _pod_specs(objects):
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]


def probe_problems(obj: dict, container: dict, objects: list[dict]) -> list[str]:
    """Probes are native gRPC on the serving port; with TLS on (the service's TLS_CERT set in its
    ConfigMap) native probes cannot connect, so they must be exec probes of the TLS-aware check."""
    component = obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    module = component.replace("-", "_")
    configs = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env = {}
    for source in container.get("envFrom", []):
        env.update(configs.get((source.get("configMapRef") or {}).get("name"), {}))
    tls = bool(env.get(f"PROMPTOPT_{module.upper()}_TLS_CERT"))
    grpc_ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == "grpc"]
    health_check = ["python", "-m", "services.common.healthcheck", module]
    problems = []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container.get(probe) or {}
        if tls and (spec.get("exec") or {}).get("command") != health_check:
            problems.append(f"{_name(obj)}: with TLS on, {probe} must be the exec probe {health_check}")
        if not tls and (spec.get("grpc") or {}).get("port") not in grpc_ports:
            problems.append(f"{_name(obj)}: {probe} must be a native gRPC probe on the grpc port {grpc_ports}")
    return problems


def policy_problems(objects: list[dict]) -> list[str]:
    """References, probes, security and selectors across the rendered objects."""
    problems = []
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    pods = [(obj, template["metadata"].get("labels", {})) for obj, template in _pod_specs(objects)]
    for obj, template in _pod_specs(objects):
        spec = template["spec"]
        if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
            problems.append(f"{_name(obj)}: pod securityContext.runAsNonRoot is not true")
        for volume in spec.get("volumes", []):
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in names:
                problems.append(f"{_name(obj)}: volume {volume['name']} claims missing PVC {claim}")
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{_name(obj)} container {container['name']}"
            security = container.get("securityContext") or {}
            if (security.get("readOnlyRootFilesystem"), security.get("allowPrivilegeEscalation")) != (True, False):
                problems.append(f"{where}: needs readOnlyRootFilesystem=true and allowPrivilegeEscalation=false")
            resources = container.get("resources") or {}
            if not resources.get("requests") or not resources.get("limits"):
                problems.append(f"{where}: resource requests and limits must both be set")
            for source in container.get("envFrom", []):
                ref = (source.get("configMapRef") or {}).get("name")
                if ref and ("ConfigMap", ref) not in names:
                    problems.append(f"{where}: envFrom missing ConfigMap {ref}")
            for variable in container.get("env", []):
                secret = ((variable.get("valueFrom") or {}).get("secretKeyRef")) or {}
                if secret and not secret.get("optional") and ("Secret", secret["name"]) not in names:
                    problems.append(f"{where}: env {variable['name']} needs Secret {secret['name']} (or optional)")
        if obj["kind"] == "Deployment":
            problems += probe_problems(obj, spec["containers"][0], objects)
    for service in (o for o in objects if o["kind"] == "Service"):
        if not any(_matches({"matchLabels": service["spec"]["selector"]}, labels) for _, labels in pods):
            problems.append(f"{_name(service)}: selector matches no pod template")
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        if not any(_matches(policy["spec"]["podSelector"], labels) for _, labels in pods):
            problems.append(f"{_name(policy)}: podSelector matches no pod template")
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    if not any(_matches(peer["podSelector"], labels) for _, labels in pods):
                        problems.append(f"{_name(policy)}: ingress peer {peer['podSelector']} matches no pod template")
    return problems


def gpu_problems(overlay: str, objects: list[dict]) -> list[str]:
    """Model services request the overlay's GPU resource; optimizer and tuner never see a GPU."""
    problems = []
    expected = GPU_RESOURCE[overlay]
    configs = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    for obj, template in _pod_specs(objects):
        component = template["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        container = template["spec"]["containers"][0]
        gpus = [key for key in (container.get("resources") or {}).get("limits", {}) if key.startswith("nvidia.com/")]
        if component in MODEL_SERVICES:
            if expected is None and gpus:
                problems.append(f"{overlay}: {_name(obj)} requests {gpus} in a CPU overlay")
            if expected is not None and not any(g.startswith(expected) for g in gpus):
                problems.append(f"{overlay}: {_name(obj)} requests {gpus or 'no GPU'}, expected {expected}*")
        elif component in ("optimizer", "tuner"):
            if gpus:
                problems.append(f"{overlay}: {_name(obj)} must not request GPUs ({gpus})")
            env = {}
            for source in container.get("envFrom", []):
                env.update(configs.get(source["configMapRef"]["name"], {}))
            if env.get("NVIDIA_VISIBLE_DEVICES") != "void":
                problems.append(f"{overlay}: {_name(obj)} must set NVIDIA_VISIBLE_DEVICES=void")
    return problems


def validate_k8s(version: str = K8S_VERSION) -> tuple[list[str], list[str]]:
    """(problems, report lines) over every overlay and every component on the cpu overlay."""
    problems, report = [], []
    for overlay in sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir()):
        objects = render(overlay)
        found, notes = schema_problems(objects, version)
        found += policy_problems(objects) + gpu_problems(overlay.name, objects)
        problems += [f"overlays/{overlay.name}: {p}" for p in found]
        report.append(f"overlays/{overlay.name}: {len(objects)} objects, {len(found)} problems")
        report += [f"  {n}" for n in notes]
    used = set()
    for overlay in (K8S / "overlays").iterdir():
        used.update(yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("components", []))
    optional = [p for p in (K8S / "components").iterdir() if p.is_dir() and f"../../components/{p.name}" not in used]
    for component in sorted(optional):
        objects = render_with_component(K8S / "overlays" / "cpu", component)
        found, notes = schema_problems(objects, version)
        found += policy_problems(objects)
        problems += [f"components/{component.name} (on overlays/cpu): {p}" for p in found]
        report.append(f"components/{component.name} on overlays/cpu: {len(objects)} objects, {len(found)} problems")
        report += [f"  {n}" for n in notes]
    return problems, report


def dockerfile_stages(path: Path = DEPLOY / "docker" / "Dockerfile") -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined)."""
    stages, current = {}, None
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if match:
            current = match.group(1)
            stages[current] = [line]
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def compose_problems(path: Path = compose.COMPOSE_FILE) -> list[str]:
    from compose_spec import PyOptions

    document = compose.read(path)
    try:
        PyOptions(apply_merge=True).from_yaml(yaml.safe_dump(document)).validate()
    except ValueError as exc:
        return [f"{path.name}: not valid under the compose specification: {exc}"]
    problems = []
    services = document["services"]
    stages = dockerfile_stages()
    for name, service in services.items():
        for dependency in compose.depends_on(service):
            if dependency not in services:
                problems.append(f"services.{name}.depends_on: no service {dependency!r}")
        target = (service.get("build") or {}).get("target")
        if target and target not in stages:
            problems.append(f"services.{name}.build.target: no stage {target!r} in deploy/docker/Dockerfile")
        command = service.get("command") or []
        if command[:2] == ["python", "-m"] and command[2].startswith("services."):
            test = (service.get("healthcheck") or {}).get("test") or []
            if test[:4] != ["CMD", "python", "-m", "services.common.healthcheck"] or test[4:] != [command[2][9:]]:
                problems.append(f"services.{name}.healthcheck: expected services.common.healthcheck {command[2][9:]}")
    for profile in ("cpu", "gpu"):
        try:
            specs = compose.load_services(path, profile)
        except compose.ComposeError as exc:
            problems.append(f"profile {profile}: {exc}")
            continue
        if sorted(s.module for s in specs) != sorted(compose.MODULES):
            problems.append(f"profile {profile}: runs {sorted(s.module for s in specs)}, expected all six services")
    problems += prometheus_problems(document)
    return problems


def prometheus_problems(document: dict) -> list[str]:
    """Every promptopt service's metrics port is scraped by its compose name, and nothing else."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    expected = set()
    for name, service in document["services"].items():
        if not compose.active(service, "gpu"):  # cpu-profile services answer to the same names
            continue
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("PROMPTOPT_") and key.endswith("_METRICS_PORT"):
                expected.add(f"{name}:{value}")
    problems = [f"prometheus.yml: no scrape target {t}" for t in sorted(expected - scraped)]
    problems += [f"prometheus.yml: target {t} is not a promptopt metrics port" for t in sorted(scraped - expected)]
    return problems


DASHBOARD = DEPLOY / "grafana" / "dashboards" / "promptopt.json"


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of the Grafana dashboard, in panel order."""
    import json

    return [target["expr"] for panel in json.loads(path.read_text())["panels"] for target in panel["targets"]]


def dashboard_metrics(path: Path = DASHBOARD) -> set[str]:
    """Metric names used by the dashboard's PromQL expressions.

    Strips strings, label matchers, `by (...)` groupings and range selectors; what remains as an
    identifier not followed by `(` (a function call) is a metric name.
    """
    names = set()
    for expr in dashboard_queries(path):
        expr = re.sub(r'"[^"]*"', "", expr)
        expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
        names.update(m.group(1) for m in re.finditer(r"\b([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr))
    return names


def exported_metrics(exposition: str) -> tuple[set[str], set[str]]:
    """(declared, sampled) series names in a /metrics page: declared counts `# TYPE` lines
    (histograms as their _bucket/_sum/_count series); sampled counts series with a value."""
    declared, sampled = set(), set()
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}
    for line in exposition.splitlines():
        match = re.match(r"# TYPE (\S+) (\S+)", line)
        if match:
            name, kind = match.groups()
            declared.update(name + suffix for suffix in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            sampled.add(re.match(r"[^{ ]+", line).group(0))
    return declared | sampled, sampled


def main(argv: list[str] | None = None) -> int:
    what = (argv if argv is not None else sys.argv[1:]) or ["all"]
    problems = []
    if what[0] in ("k8s", "all"):
        found, report = validate_k8s()
        print(f"kubernetes-validate {kubernetes_validate.__version__}, strict, Kubernetes {K8S_VERSION}")
        print("\n".join(report))
        problems += found
    if what[0] in ("compose", "all"):
        found = compose_problems()
        print(f"deploy/docker-compose.yml: compose specification and wiring, {len(found)} problems")
        problems += found
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
