"""A real Prometheus (the `prometheus` binary, Debian's 2.42 here) scraping a loopback stack
with the repository's `deploy/prometheus/prometheus.yml`: only the target addresses (compose
service names) are rewritten to the local metrics ports, and the scrape interval shortened."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"


def available() -> str:
    """'' when prometheus and promtool are on PATH, else why not."""
    missing = [b for b in ("prometheus", "promtool") if shutil.which(b) is None]
    return f"{' and '.join(missing)} not installed (apt-get install prometheus)" if missing else ""


def check_config(path: Path = CONFIG) -> str:
    """`promtool check config` output; raises CalledProcessError if the file is invalid."""
    return subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, check=True).stdout


def loopback_config(addresses: dict[str, str], interval: str = "1s", path: Path = CONFIG) -> dict:
    """The repository config with each `name:port` target replaced by `addresses[name]`."""
    config = yaml.safe_load(path.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            group["targets"] = [addresses[t.rsplit(":", 1)[0]] for t in group["targets"]]
    return config


class LocalPrometheus:
    """Runs prometheus on a free loopback port over `config`; `query` evaluates PromQL."""

    def __init__(self, config: dict, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        check_config(self.config_path)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def scrapes(self) -> int:
        """Scrapes so far of the least-scraped target (0 until every target is up)."""
        try:
            targets = self.api("targets")["activeTargets"]
            counts = self.query("count_over_time(up[10m])")
        except (OSError, AssertionError):
            return 0
        if not targets or any(t["health"] != "up" for t in targets) or len(counts) < len(targets):
            return 0
        return min(int(s["value"][1]) for s in counts)

    def wait_scrapes(self, more: int = 2, timeout: float = 60.0) -> list[dict]:
        """Wait until every target is up and scraped `more` times after now; the active targets."""
        deadline, goal = time.monotonic() + timeout, self.scrapes() + more
        while time.monotonic() < deadline:
            if self.scrapes() >= goal:
                return self.api("targets")["activeTargets"]
            time.sleep(0.5)
        raise TimeoutError(f"targets not up and scraped {more} more times after {timeout:.0f}s")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self.log.close()
