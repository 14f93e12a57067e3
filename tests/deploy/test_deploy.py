"""The deployment files: kustomize overlays under kubernetes-validate, the compose file under the
compose specification, the Dockerfile's targets, and the compose -> loopback wiring."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from services.common import compose
from services.encoder.types import SONAR_ENCODER
from services.tuner.inputs import SHIPPED_CORPUS, SHIPPED_GRID
from tests.deploy import validate

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cpu_objects():
    return validate.render(validate.K8S / "overlays" / "cpu")


def _find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name))


def test_every_overlay_and_component_validates():
    problems, report = validate.validate_k8s()
    assert problems == []
    overlays = {line.split(":")[0] for line in report if line.startswith("overlays/")}
    assert overlays == {
        "overlays/cpu",
        "overlays/gpu-node",
        "overlays/gpu-node-sonar",
        "overlays/gpu-mig",
        "overlays/gpu-timeslice",
    }
    # The ServiceMonitor (a CRD kind) is reported and checked, not silently skipped.
    assert any("ServiceMonitor/promptopt: CRD kind" in line for line in report)


def test_strict_schema_rejects_a_misspelt_field(cpu_objects):
    deployment = copy.deepcopy(_find(cpu_objects, "Deployment", "encoder"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolizy"] = "Always"
    problems, _ = validate.schema_problems([deployment])
    assert len(problems) == 1 and "imagePullPolizy" in problems[0]


def test_unknown_kinds_are_problems_not_skipped():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    problems, notes = validate.schema_problems([widget])
    assert problems == ["Widget/w: no schema for example.com/v1 in Kubernetes 1.32.0"] and notes == []


def test_service_monitor_must_select_a_metrics_port(cpu_objects):
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/part-of": "promptopt"}}, "endpoints": [{"port": "x"}]},
    }
    problems, notes = validate.schema_problems([monitor, *cpu_objects])
    assert len(notes) == 1 and len(problems) == 6  # one per Service without a port named x


def test_policy_checks_catch_writable_root_and_http_probes(cpu_objects):
    objects = copy.deepcopy(cpu_objects)
    container = _find(objects, "Deployment", "llm-eval")["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["livenessProbe"] = {"httpGet": {"port": 9103, "path": "/"}}
    problems = validate.policy_problems(objects)
    assert any("llm-eval container llm-eval: needs readOnlyRootFilesystem" in p for p in problems)
    assert any("Deployment/llm-eval: livenessProbe must be a native gRPC probe" in p for p in problems)
    assert validate.policy_problems(cpu_objects) == []


def test_gpu_checks(cpu_objects):
    problems = validate.gpu_problems("gpu-node", cpu_objects)
    assert sorted(p.split(": ")[1].split()[0] for p in problems) == [
        "Deployment/decoder",
        "Deployment/encoder",
        "Deployment/llm-eval",
        "Deployment/surrogate",
    ]
    mig = validate.render(validate.K8S / "overlays" / "gpu-mig")
    llm = _find(mig, "Deployment", "llm-eval")["spec"]["template"]["spec"]["containers"][0]
    assert llm["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == "1"
    optimizer_config = _find(mig, "ConfigMap", "optimizer-config")["data"]
    assert optimizer_config["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_sonar_overlay_pairs_the_sonar_encoder_with_its_decoder():
    objects = validate.render(validate.K8S / "overlays" / "gpu-node-sonar")
    assert validate.gpu_problems("gpu-node-sonar", objects) == []
    stages = validate.dockerfile_stages()
    for service, key, value in (
        ("encoder", "PROMPTOPT_ENCODER_MODEL", SONAR_ENCODER),
        ("decoder", "PROMPTOPT_DECODER_BACKEND", "sonar"),
    ):
        container = _find(objects, "Deployment", service)["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"promptopt/{service}:latest-sonar"
        [source] = container["envFrom"]
        assert _find(objects, "ConfigMap", source["configMapRef"]["name"])["data"][key] == value
        assert f"{key}={value}" in " ".join(stages[f"{service}-sonar"])  # the image's own default agrees
    surrogate = _find(objects, "Deployment", "surrogate")["spec"]["template"]["spec"]["containers"][0]
    assert surrogate["image"] == "promptopt/surrogate:latest-cuda"


def test_compose_file_is_valid_and_wired():
    assert validate.compose_problems() == []


def test_compose_spec_violations_are_reported(tmp_path):
    text = compose.COMPOSE_FILE.read_text().replace("stop_grace_period:", "stop_grace_periods:")
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(text)
    [problem] = validate.compose_problems(bad)
    assert "not valid under the compose specification" in problem and "stop_grace_periods" in problem


def project_extras() -> dict[str, list[str]]:
    return tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_dockerfile_targets():
    stages = validate.dockerfile_stages()

    def chain(stage):  # the stage and every stage it builds FROM or COPYs --from
        lines = stages[stage]
        parents = [re.match(r"FROM\s+(\S+)", lines[0]).group(1)]
        parents += re.findall(r"--from=(\S+)", " ".join(lines))
        return [stage] + [s for p in parents if p in stages for s in chain(p)]

    for service in ("encoder", "decoder", "llm-eval", "surrogate", "optimizer", "tuner"):
        lines = stages[service]
        module = service.replace("-", "_")
        assert f'CMD ["python", "-m", "services.{module}"]' in lines
        assert any(f'"services.common.healthcheck", "{module}"]' in line for line in lines)
        text = " ".join(line for stage in chain(service) for line in stages[stage])
        assert "USER 10001:10001" in text
        assert "cu128" not in text and "vllm" not in text  # CPU images never install CUDA wheels
    for service in ("optimizer", "tuner"):
        assert "torch" not in " ".join(line for stage in chain(service) for line in stages[stage])
    # the tuner's default grid and instruction pool ship in the tuner, worker and optimizer image
    lean = " ".join(stages["lean-runtime"])
    home = re.search(r"PROMPTOPT_DATASETS_DIR=(\S+)", lean).group(1)
    copied = dict(re.findall(r"COPY (datasets/\S+) (\S+)", lean))
    for relative in (Path(SHIPPED_GRID), Path(SHIPPED_CORPUS)):
        source = f"datasets/{relative.parts[0]}"
        assert (
            copied[source] == f"{home}/{relative.parts[0]}"
            and (REPOSITORY / source / Path(*relative.parts[1:])).exists()
        )
    assert "cu128" in " ".join(stages["cuda-build"])
    # the GPU decoder's vec2text backend: installed (pinned, constrained) and importable in its image
    assert "$REQUIREMENTS ml vec2text" in " ".join(stages["cuda-build"])
    assert "vec2text==0.0.13" in project_extras()["vec2text"]
    assert "vec2text==0.0.13" in (REPOSITORY / "deploy/constraints.txt").read_text().split()
    assert any("import vec2text" in line for stage in chain("decoder-cuda") for line in stages[stage])
    # SONAR: its own torch (the one fairseq2n is built against), never the CPU stack's constraints
    sonar = " ".join(stages["sonar-build"])
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    # fairseq2n 0.8.1 is built against torch 2.9.1: the two pins move together
    assert "fairseq2n==0.8.1" in project["optional-dependencies"]["sonar"]
    assert "torch==2.9.1 " in sonar and "cu128" in sonar and "$REQUIREMENTS sonar" in sonar
    for service in ("encoder", "decoder"):
        chained = " ".join(line for stage in chain(f"{service}-sonar") for line in stages[stage])
        assert "USER 10001:10001" in chained and "torch==2.13.0" not in chained and "-c $CONSTRAINTS" not in chained
    # code changes keep the deps layer
    for build in ("lean-build", "cpu-build", "cuda-build", "vllm-build", "sonar-build"):
        lines = stages[build]
        deps = next(i for i, line in enumerate(lines) if "-r /tmp/requirements.txt" in line)
        assert deps < lines.index("COPY services services"), build
        assert ("source=.wheels" in " ".join(lines)) == (build == "cpu-build"), build  # the CPU torch wheel
        assert ("-c $CONSTRAINTS" in " ".join(lines)) == (build not in ("vllm-build", "sonar-build")), build
    assert "GGML_NATIVE=OFF" in " ".join(stages["cpu-build"])  # a portable llama.cpp
    assert stages["cpu-model"][0].startswith("FROM python-base")  # not rebuilt by code changes
    assert not any(line.startswith("COPY services ") for line in stages["cpu-model"])
    assert not any(re.search(r"(KEY|TOKEN|SECRET|PASSWORD)=", line) for lines in stages.values() for line in lines)


def test_loopback_wiring_from_compose(tmp_path):
    specs = {s.module: s for s in compose.load_services(state_dir=tmp_path, port_offset=1000)}
    # depends_on order: the decoder waits for llm_eval (LLM-guided inversion asks its meta-LLM)
    assert list(specs) == ["encoder", "llm_eval", "decoder", "surrogate", "optimizer", "tuner"]
    assert specs["optimizer"].env["PROMPTOPT_OPTIMIZER_LLM_EVAL_ADDRESS"] == "127.0.0.1:51053"
    assert specs["optimizer"].env["PROMPTOPT_OPTIMIZER_SURROGATE_ADDRESS"] == "127.0.0.1:51054"
    assert specs["decoder"].env["PROMPTOPT_DECODER_ENCODER_ADDRESS"] == "127.0.0.1:51051"
    assert specs["decoder"].env["PROMPTOPT_DECODER_LLM_EVAL_ADDRESS"] == "127.0.0.1:51053"
    assert (specs["llm_eval"].port, specs["llm_eval"].metrics_port) == (51053, 10103)
    assert specs["llm_eval"].env["PROMPTOPT_LLM_EVAL_HOST"] == "127.0.0.1"
    state = specs["optimizer"].env["PROMPTOPT_OPTIMIZER_STORE_PATH"]
    assert state == str(tmp_path / "volumes" / "optimizer-state" / "runs.sqlite")
    assert specs["tuner"].healthcheck == [sys.executable, "-m", "services.common.healthcheck", "tuner"]
    gpu = {s.name for s in compose.load_services(profile="gpu")}
    assert gpu == {"encoder", "decoder", "llm-eval", "surrogate", "optimizer", "tuner"}


def test_loopback_refuses_remapped_ports(tmp_path):
    document = yaml.safe_load(compose.COMPOSE_FILE.read_text())
    document["services"]["tuner"]["ports"] = ["60056:50056"]
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(compose.ComposeError, match="services.tuner.ports"):
        compose.load_services(path)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A}/x", {"A": "v"}, "v/x"),
        ("$$A", {"A": "v"}, "$A"),
    ],
)
def test_interpolation(text, env, expected):
    assert compose.interpolate(text, env) == expected


def test_the_installed_package_carries_every_data_file(tmp_path):
    """Images `pip install .`: every non-Python file the services read must be in the wheel
    (built from a clean copy of the tree, so no stale build/ directory can supply one)."""
    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "source"
    for part in ("services", "gen"):
        shutil.copytree(root / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(source)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("promptopt-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    data = {
        str(p.relative_to(root))
        for p in (root / "services").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert data and data - packed == set()


def test_tls_component_turns_probes_into_tls_health_checks(cpu_objects):
    tls = validate.render_with_component(validate.K8S / "overlays" / "cpu", validate.K8S / "components" / "tls")
    assert validate.policy_problems(tls) == []
    for name in ("encoder", "decoder", "llm-eval", "surrogate", "optimizer", "tuner"):
        pod = _find(tls, "Deployment", name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            module = name.replace("-", "_")
            assert container[probe]["exec"]["command"] == ["python", "-m", "services.common.healthcheck", module]
            assert "grpc" not in container[probe] and container[probe]["timeoutSeconds"] == 10
        assert {"name": "tls", "mountPath": "/etc/promptopt/tls", "readOnly": True} in container["volumeMounts"]
        assert {"name": "tls", "secret": {"secretName": "promptopt-tls", "defaultMode": 0o440}} in pod["volumes"]
        prefix = f"PROMPTOPT_{name.replace('-', '_').upper()}_"
        config = _find(tls, "ConfigMap", f"{name}-config")["data"]
        assert config[prefix + "TLS_CLIENT_CA"] == "/etc/promptopt/tls/ca.crt"  # mTLS: clients need a certificate
    assert _find(tls, "ConfigMap", "optimizer-config")["data"]["PROMPTOPT_OPTIMIZER_TLS_CA"]  # it calls the others
    # TLS on with native probes (which cannot speak TLS) is caught, and so are exec probes without TLS
    encoder_config = _find(cpu_objects, "ConfigMap", "encoder-config")
    with_tls = copy.deepcopy(cpu_objects)
    _find(with_tls, "ConfigMap", "encoder-config")["data"] = {
        **encoder_config["data"],
        "PROMPTOPT_ENCODER_TLS_CERT": "x",
    }
    assert validate.policy_problems(with_tls) == [
        f"Deployment/encoder: with TLS on, {probe} must be the exec probe "
        "['python', '-m', 'services.common.healthcheck', 'encoder']"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    ]
    without_tls = copy.deepcopy(tls)
    del _find(without_tls, "ConfigMap", "encoder-config")["data"]["PROMPTOPT_ENCODER_TLS_CERT"]
    assert len([p for p in validate.policy_problems(without_tls) if "encoder: " in p and "native gRPC" in p]) == 3
