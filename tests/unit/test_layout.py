"""The repository's layout rule, checked on the import graph (parsed, nothing imported): each
service owns its contract (`types`, `convert`, `client` beside its core and server); another
service reaches it only through its `client` and `types`; `services/common` depends on no
service and holds no service's protos."""

import ast
from pathlib import Path

import pytest

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
SERVICES = ("encoder", "decoder", "llm_eval", "surrogate", "optimizer", "tuner")
CONTRACT = ("client", "types")  # what one service may import from another
SHARED_PROTOS = ("promptopt.common.", "promptopt.operations.")


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


def cross_service_edges(root: Path = SERVICES_DIR) -> list[str]:
    """`file -> module` for every import of another service's module other than its contract."""
    bad = []
    for service in SERVICES:
        for path in sorted((root / service).rglob("*.py")):
            for module in imports(path):
                parts = module.split(".")
                if len(parts) >= 2 and parts[0] == "services" and parts[1] in SERVICES and parts[1] != service:
                    if len(parts) < 3 or parts[2] not in CONTRACT:
                        bad.append(f"{path.relative_to(root)} -> {module}")
    return bad


def test_services_meet_only_through_clients_and_types():
    assert cross_service_edges() == []


def test_the_check_sees_a_forbidden_edge(tmp_path):
    for service in SERVICES:
        (tmp_path / service).mkdir()
    (tmp_path / "optimizer" / "x.py").write_text("from services.surrogate.engine import SurrogateEngine\n")
    (tmp_path / "optimizer" / "y.py").write_text("from services.surrogate.types import VaeConfig\n")
    assert cross_service_edges(tmp_path) == [
        "optimizer/x.py -> services.surrogate.engine",
        "optimizer/x.py -> services.surrogate.engine.SurrogateEngine",
    ]


@pytest.mark.parametrize("path", sorted((SERVICES_DIR / "common").glob("*.py")), ids=lambda p: p.name)
def test_common_depends_on_no_service(path):
    for module in imports(path):
        parts = module.split(".")
        assert not (parts[0] == "services" and len(parts) > 1 and parts[1] in SERVICES), module
        assert not module.startswith("promptopt.") or module.startswith(SHARED_PROTOS), module


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_its_client(service):
    assert (SERVICES_DIR / service / "client.py").is_file()
