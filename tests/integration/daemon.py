"""Start `gateway run` as a real subprocess with a generated config (free ports, temp dirs)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.store.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


def write_config(directory: Path, **overrides: Any) -> Path:
    """A gateway.yaml for tests: embedded or given Redis, free ports, repo templates/menus."""
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "redis": {"url": "embedded", "data_dir": str(directory / "redis")},
        "http": {"listen": f"127.0.0.1:{free_port()}", "token": "test-token"},
        "smpp_server": {"listen": f"127.0.0.1:{free_port()}"},
        "ivr": {"fastagi": {"listen": f"127.0.0.1:{free_port()}"},
                "menus_file": str(REPO / "config" / "ivr.yaml")},
        "push": {"templates_file": str(REPO / "config" / "templates.yaml")},
        "drain_timeout_seconds": 5,
        "carriers": [],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


@dataclass
class Daemon:
    config_path: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # added to the environment (secrets)
    niceness: int | None = None  # its CPU priority, absolute (None: inherited; tests/integration/cluster_run.py)
    launcher: list[str] = field(default_factory=list)  # a command the daemon runs under (e.g. unshare)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8"))

    @property
    def http_base(self) -> str:
        return "http://" + self.config["http"]["listen"]

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "gateway", "run", "-c", str(self.config_path), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(self.config_path.parent),
            preexec_fn=None if self.niceness is None else functools.partial(os.setpriority, os.PRIO_PROCESS, 0,
                                                                             self.niceness),
        )
        log.close()

    def wait_until(self, path: str, status: int = 200, timeout_seconds: float = 30.0) -> dict[str, Any]:
        """Poll an HTTP path until it answers `status`; returns the JSON body."""
        deadline = time.monotonic() + timeout_seconds
        last: Any = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                code, body = self.get(path)
                if code == status:
                    return body
                last = (code, body)
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise AssertionError(f"{path} did not answer {status} in {timeout_seconds}s (last: {last})")

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return _send(urllib.request.Request(self.http_base + path), token, timeout_seconds=5)

    def post(self, path: str, payload: Any, token: str | None = "test-token") -> tuple[int, Any]:
        data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        request = urllib.request.Request(self.http_base + path, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        return _send(request, token, timeout_seconds=10)

    def terminate(self, timeout_seconds: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_seconds)

    def kill(self) -> None:
        """SIGKILL: an embedded redis-server is left running, as after a crash (the next
        start takes it over); use `stop` where no next start follows."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_seconds: float = 30.0) -> None:
        """SIGTERM (the daemon stops its embedded redis-server), SIGKILL if it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _send(request: urllib.request.Request, token: str | None, *, timeout_seconds: float) -> tuple[int, Any]:
    """The status and the (JSON if it parses) body; error statuses are answers too."""
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            return response.status, _body(response.read())
    except urllib.error.HTTPError as e:
        return e.code, _body(e.read())


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
