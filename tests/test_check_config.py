"""`gateway check-config` as a subprocess finds every problem and never prints a secret
(issue 12 items 7 and 8)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    for name in ("templates.yaml", "ivr.yaml"):  # the real ones: check-config reads them too
        (tmp_path / name).write_text((REPO / "config" / name).read_text(encoding="utf-8"), encoding="utf-8")
    return path


def check_config(path: Path, **environ: str) -> tuple[int, list[str], str]:
    """Run `gateway check-config`; (exit code, problem lines, stdout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARTNER_", "CARRIER_", "GATEWAY_"))}
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
                            capture_output=True, text=True, cwd=REPO, env={**env, **environ}, timeout=120)
    lines = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    return result.returncode, lines, result.stdout + result.stderr


MANY_PROBLEMS = """
http:
  listen: 127.0.0.1:18123
  token: ""
ivr:
  fastagi:
    listen: 0.0.0.0:18123
carriers:
  - name: cmcc
    host: 127.0.0.1
    port: 2776
    system_id: gwcm
    password: cmpass
    prefixes: ["138", "139"]
    window: 0
  - name: cucc
    host: 127.0.0.1
    port: 2777
    system_id: gwcu
    password: ${CARRIER_CU_PASSWORD}
    prefixes: ["130", "138"]
smpp_server:
  accounts:
    - system_id: fj
      password: 2024-01-01
push:
  quiet_hours:
    start: "25:00"
"""


def test_every_problem_is_reported_once_with_file_and_key(tmp_path: Path) -> None:
    """A range error under carriers no longer hides the others: the empty token, the
    FastAGI port that HTTP has, the prefix on two carriers, the empty ${VAR} secret, the
    date given as a password (not echoed) and a bad quiet-hours time: exit 2, one line
    each naming the file and the key path."""
    path = write(tmp_path, MANY_PROBLEMS)
    code, lines, output = check_config(path, CARRIER_CU_PASSWORD="")
    assert code == 2, output
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    keys = sorted(line.split(": ")[1] for line in lines)
    assert keys == sorted([
        "carriers[0].window", "carriers[1].password", "smpp_server.accounts[0].password",
        "ivr.fastagi.listen", "carriers[1].prefixes[1]", "push.quiet_hours.start", "http.token"]), lines
    assert "2024" not in output and "datetime" not in output, output
    said = {line.split(": ")[1]: line.split(": ", 2)[2] for line in lines}
    assert said["smpp_server.accounts[0].password"] == "expected text, got a date (quote it in YAML)"
    assert said["carriers[1].password"] == "environment variable CARRIER_CU_PASSWORD is empty"
    assert "http.listen" in said["ivr.fastagi.listen"]
    assert "failover_for: [cmcc]" in said["carriers[1].prefixes[1]"]


def test_an_empty_file_is_not_ok(tmp_path: Path) -> None:
    """An empty file (or one with only comments) is an error, not "OK (0 carriers)"."""
    path = write(tmp_path, "# nothing here yet\n")
    code, lines, output = check_config(path)
    assert code == 2 and lines == [f"{path}: (top level): the file is empty (no settings)"], output


def test_posix_default_for_an_empty_variable_and_declared_failover(tmp_path: Path) -> None:
    """${VAR:-default} takes the default when VAR is empty (the partner no longer binds
    with an empty password), and a prefix shared on purpose (failover_for) passes."""
    path = write(tmp_path, """
        http:
          token: ${GATEWAY_HTTP_TOKEN:-t0ken}
        carriers:
          - {name: cmcc, host: 127.0.0.1, port: 2776, system_id: gwcm, password: cmpass, prefixes: ["138"]}
          - {name: cucc, host: 127.0.0.1, port: 2777, system_id: gwcu, password: cupass, prefixes: ["130", "138"],
             failover_for: [cmcc]}
        smpp_server:
          accounts:
            - {system_id: fj, password: "${PARTNER_FJ_PASSWORD:-fjpass}"}
        """)
    code, lines, output = check_config(path, PARTNER_FJ_PASSWORD="", GATEWAY_HTTP_TOKEN="")
    assert code == 0 and "OK (2 carriers)" in output, output
    config = load_config(path, environ={"PARTNER_FJ_PASSWORD": "", "GATEWAY_HTTP_TOKEN": ""})
    assert config.smpp_server.accounts[0].password.reveal() == "fjpass"
    assert config.http.token.reveal() == "t0ken"


def test_empty_passwords_are_refused(tmp_path: Path) -> None:
    """An empty partner or carrier password is an error, written or from the environment."""
    path = write(tmp_path, """
        carriers:
          - {name: cmcc, host: 127.0.0.1, port: 2776, system_id: gwcm, password: "", prefixes: ["138"]}
        smpp_server:
          accounts:
            - {system_id: fj, password: "${PARTNER_FJ_PASSWORD:-}"}
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    keys = [p.split(": ")[1] for p in caught.value.problems]
    assert keys == ["carriers[0].password", "smpp_server.accounts[0].password"], caught.value.problems
