"""The repository's layout rule, checked on the import graph (parsed, nothing imported): each
service owns its contract (`types`, `convert`, `client` beside its core and server); another
service, or the `promptopt` CLI (`services/cli`, which no service imports), reaches it only
through its `client` and `types`; a process entry point (`__main__`) may host another service's
`server` (the surrogate's process serves the flow and Neuro-Latent services); no two packages
import each other, directly or around a loop; `services/common` depends on no service and
holds no service's protos."""

import ast
from pathlib import Path

import pytest

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
APPS = ("cli",)  # packages no service imports
# every package under services/ but the shared one: a new package is checked without listing it here
PACKAGES = tuple(sorted(p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").is_file() and p.name != "common"))
SERVICES = tuple(p for p in PACKAGES if p not in APPS)
CONTRACT = ("client", "types")  # what one service may import from another
HOSTED = ("server",)  # what a process entry point may also import from another service
SHARED_PROTOS = ("promptopt.common.", "promptopt.operations.", "promptopt.artifacts.")  # served by several services


def imports(path: Path) -> list[str]:
    """Every module `path` imports (absolute names; `from x import y` also yields x.y)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{alias.name}" for alias in node.names]
    return out


def package_imports(root: Path):
    """(package, file, module, imported package) for every import of one package by another."""
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for module in imports(path):
                parts = module.split(".")
                if len(parts) >= 2 and parts[0] == "services" and parts[1] in PACKAGES and parts[1] != package:
                    yield package, path, module, parts[1]


def cross_service_edges(root: Path = SERVICES_DIR) -> list[str]:
    """`file -> module` for every import of another package's module other than its contract
    (or, from a `__main__`, its server), and every import of the CLI."""
    bad = []
    for _, path, module, target in package_imports(root):
        parts = module.split(".")
        allowed = CONTRACT + (HOSTED if path.name == "__main__.py" else ())
        if target in APPS or len(parts) < 3 or parts[2] not in allowed:
            bad.append(f"{path.relative_to(root)} -> {module}")
    return bad


def package_cycles(root: Path = SERVICES_DIR) -> list[list[str]]:
    """Every loop of the package graph (a package that reaches itself through others' imports)."""
    graph: dict[str, set[str]] = {}
    for package, _, _, target in package_imports(root):
        graph.setdefault(package, set()).add(target)
    cycles = []

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each loop once, from its smallest package
                walk([*path, nxt])

    for package in sorted(graph):
        walk([package])
    return cycles


def test_services_meet_only_through_clients_and_types():
    assert cross_service_edges() == []


def test_no_packages_import_each_other_around_a_loop():
    assert package_cycles() == []


def test_the_cycle_check_sees_a_loop(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "tuner" / "a.py").write_text("from services.optimizer.client import OptimizerClient\n")
    (tmp_path / "optimizer" / "b.py").write_text("from services.llm_eval.types import Usage\n")
    assert package_cycles(tmp_path) == []
    (tmp_path / "llm_eval" / "c.py").write_text("from services.tuner.client import TunerClient\n")
    assert package_cycles(tmp_path) == [["llm_eval", "tuner", "optimizer", "llm_eval"]]


def test_the_package_list_is_the_tree():
    assert {"cli", "flow", "neuro", "optimizer", "surrogate", "tuner"} <= set(PACKAGES) and "common" not in PACKAGES
    assert "cli" not in SERVICES


def test_the_check_sees_a_forbidden_edge(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "optimizer" / "x.py").write_text("from services.surrogate.engine import SurrogateEngine\n")
    (tmp_path / "optimizer" / "y.py").write_text("from services.surrogate.types import VaeConfig\n")
    (tmp_path / "surrogate" / "__main__.py").write_text("from services.flow.server import flow_service\n")
    (tmp_path / "surrogate" / "z.py").write_text("from services.flow.server import flow_service\n")
    (tmp_path / "tuner" / "w.py").write_text("from services.cli.main import main\n")
    assert cross_service_edges(tmp_path) == [
        "optimizer/x.py -> services.surrogate.engine",
        "optimizer/x.py -> services.surrogate.engine.SurrogateEngine",
        "surrogate/z.py -> services.flow.server",
        "surrogate/z.py -> services.flow.server.flow_service",
        "tuner/w.py -> services.cli.main",
        "tuner/w.py -> services.cli.main.main",
    ]


@pytest.mark.parametrize("path", sorted((SERVICES_DIR / "common").glob("*.py")), ids=lambda p: p.name)
def test_common_depends_on_no_service(path):
    for module in imports(path):
        parts = module.split(".")
        assert not (parts[0] == "services" and len(parts) > 1 and parts[1] in PACKAGES), module
        assert not module.startswith("promptopt.") or module.startswith(SHARED_PROTOS), module


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_its_client(service):
    assert (SERVICES_DIR / service / "client.py").is_file()
