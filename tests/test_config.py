"""Configuration checking: each kind of bad config gives its own clear message and exit 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.config import ConfigError, Secret, describe_schema, load_config

REPO = Path(__file__).resolve().parents[1]

CARRIER = """
carriers:
  - name: cmcc
    host: 127.0.0.1
    port: 2776
    system_id: gw
    password: secret
    prefixes: ["138"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    (tmp_path / "templates.yaml").write_text("{}\n", encoding="utf-8")
    (tmp_path / "ivr.yaml").write_text("{}\n", encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, text), environ=environ or {})
    return excinfo.value.problems


def test_committed_example_config_is_valid() -> None:
    """config/gateway.yaml as committed loads without a problem (it runs the demo)."""
    config = load_config(REPO / "config" / "gateway.yaml", environ={})
    assert [c.name for c in config.carriers] == ["cmcc", "cucc", "ctcc"]
    assert config.redis.url == "embedded"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis:\n  prefx: x\n", "gateway.yaml: redis.prefx: unknown key (did you mean 'prefix'?)"),
        (CARRIER.replace("port: 2776", "port: many"), "carriers[0].port: expected a number, got 'many'"),
        (CARRIER.replace("    system_id: gw\n", ""), "carriers[0].system_id: required value missing"),
        (CARRIER.replace("port: 2776", "port: 70000"), "carriers[0].port: 70000 is out of range [1, 65535]"),
        (CARRIER + "    window: 0\n", "carriers[0].window: 0 is out of range [1, 10000]"),
        ("push:\n  templates_file: nowhere.yaml\n", "push.templates_file: file not found"),
        # a name longer than the file system allows: pathlib's is_file() raises, not False
        ("push:\n  templates_file: " + "t" * 300 + ".yaml\n",
         "push.templates_file: cannot use"),
        ("smpp_server:\n  tls_certificate: " + "c" * 300 + ".pem\n",
         "smpp_server.tls_certificate: cannot use"),
        (CARRIER.replace("password: secret", "password: ${CM_PASSWORD}"),
         "carriers[0].password: environment variable CM_PASSWORD is not set"),
        (CARRIER + "    bind_mode: duplex\n", "carriers[0].bind_mode: 'duplex' is not one of: transceiver, transmitter_receiver"),
        ("http:\n  enabled: maybe\n", "http.enabled: expected true or false, got 'maybe'"),
        ("carriers: {}\n", "carriers: expected a list, got a mapping"),
        ("redis:\n  url: embeded\n", "redis.url: expected 'embedded' or a redis://"),
        ("push:\n  quiet_hours:\n    start: 25:00\n", "push.quiet_hours.start: '25:00' is not a time of day"),
        (CARRIER + "    password: toolongpassword\n".replace("    password", "    system_type: x\n    xx"),
         "carriers[0].xx: unknown key"),
        ("smpp_server:\n  accounts:\n    - system_id: p\n      password: x\n      allowed_networks: [not-a-net]\n",
         "smpp_server.accounts[0].allowed_networks[0]: 'not-a-net' is not a network (CIDR)"),
        ("drain_timeout_seconds: 1:30\n", "drain_timeout_seconds: '1:30' is read by YAML 1.1 as the number 90"),
        ("push:\n  retention_days: 1\n", "push.receipt_timeout_seconds: 172800 s is longer than push.retention_days (1 days)"),
        ("push:\n  partitions: 0\n", "push.partitions: 0 is out of range [1, 1024]"),
        ("redis:\n  cluster_nodes: [a-host, 'b:99999']\n", "redis.cluster_nodes[0]: 'a-host' is not host:port"),
        ("redis:\n  url: redis://h:7000\n  cluster_nodes: ['h:7000']\n",
         "push.partitions: a Redis Cluster (redis.cluster_nodes) needs more than 1 partition"),
        ("redis:\n  cluster_nodes: ['h:7000']\npush:\n  partitions: 16\n",
         "redis.url: 'embedded' with redis.cluster_nodes"),
        ("push:\n  delivery_wait_replicas: 1\n",
         "push.delivery_wait_replicas: the embedded redis-server has no replica to wait for"),
        ("push:\n  intake_wait_replicas: 1\n",
         "push.intake_wait_replicas: the embedded redis-server has no replica to wait for"),
        ("push:\n  partitions: 4\nami:\n  enabled: true\n", "ami.secret: empty while ami.enabled is true"),
        ("push:\n  ledger_engine: steps\n  partitions: 4\n",
         "push.ledger_engine: steps runs on a single Redis with push.partitions 1"),
        ("push:\n  ledger_engine: lua\n", "push.ledger_engine: 'lua' is not one of: scripts, steps"),
    ],
)
def test_each_kind_of_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    """A bad value gives one message with the file, the key path and what is wrong."""
    found = problems(tmp_path, text)
    assert any(expected in p for p in found), found
    assert all(p.startswith(str(tmp_path / "gateway.yaml")) for p in found)


def test_voice_reminders_run_on_a_partitioned_cluster(tmp_path: Path) -> None:
    """ami.enabled with 16 partitions on a Redis Cluster is a valid config (the voice
    reminders, MO and partner receipts are partitioned too): no problem about partitions."""
    config = load_config(write(tmp_path, "redis:\n  url: redis://h:7000\n  cluster_nodes: ['h:7000', 'h:7001']\n"
                                         "push:\n  partitions: 16\nami:\n  enabled: true\n  secret: s3cret\n"),
                         environ={})
    assert (config.push.partitions, config.ami.enabled) == (16, True)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    """Validation collects every problem instead of stopping at the first."""
    found = problems(tmp_path, CARRIER.replace("port: 2776", "port: 0") + "    window: -1\nhttp:\n  listn: x\n")
    assert len(found) == 3


def test_yaml_11_numbers_come_out_as_the_strings_they_mean(tmp_path: Path) -> None:
    """Unquoted 22:00, 12123 and phone-like values stay text where the schema wants text."""
    config = load_config(write(tmp_path, CARRIER + "    source_addr: 12123\n"
                               "push:\n  quiet_hours:\n    start: 22:00\n    end: 07:30\n"
                               "ivr:\n  service_hours: 08:30-17:30\n"), environ={})
    assert config.push.quiet_hours.start == "22:00"  # pyyaml alone gives 1320
    assert config.push.quiet_hours.end == "07:30"
    assert config.carriers[0].source_addr == "12123"
    assert config.carriers[0].prefixes == ("138",)
    assert config.ivr.service_hours == "08:30-17:30"


def test_secret_from_environment_never_prints(tmp_path: Path) -> None:
    """${VAR} resolves at load into a Secret whose repr and str are '***'."""
    config = load_config(write(tmp_path, CARRIER.replace("password: secret", "password: ${CM_PW}")),
                         environ={"CM_PW": "s3cr3t"})
    password = config.carriers[0].password
    assert isinstance(password, Secret) and password.reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(config)


def test_check_config_command_exits_2_with_the_message(tmp_path: Path) -> None:
    """`gateway check-config` prints the problems on stderr and exits 2; 0 for a good file."""
    bad = write(tmp_path, CARRIER.replace("port: 2776", "port: 99999"))
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "carriers[0].port: 99999 is out of range" in result.stderr
    good = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(REPO / "config" / "gateway.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr


def test_schema_reference_lists_every_stable_key() -> None:
    """The keys integrators rely on are in the schema reference."""
    keys = {row[0] for row in describe_schema()}
    for stable in ("redis.url", "http.listen", "carriers[].name", "carriers[].host", "carriers[].port",
                   "carriers[].system_id", "carriers[].password", "carriers[].prefixes",
                   "smpp_server.listen", "smpp_server.accounts[].system_id", "ivr.fastagi.listen",
                   "ami.host", "ami.port", "ami.username", "ami.secret"):
        assert stable in keys


def test_configuration_reference_document_is_current() -> None:
    """docs/configuration.md is what `gateway config-reference` prints for this schema."""
    from gateway.config import reference_markdown

    assert (REPO / "docs" / "configuration.md").read_text(encoding="utf-8") == reference_markdown()


def test_carrier_error_classes_are_checked(tmp_path: Path) -> None:
    """carriers[].error_classes: a hex status loads as its number; a bad class, an
    impossible status and a status listed twice are each named."""
    ok = CARRIER + "    error_classes:\n      - {status: 0x45, treat_as: temporary}\n"
    [carrier] = load_config(write(tmp_path, ok), environ={}).carriers
    assert [(o.status, o.treat_as) for o in carrier.error_classes] == [(0x45, "temporary")]
    bad = CARRIER + textwrap.indent(textwrap.dedent("""\
        error_classes:
          - {status: 0x08, treat_as: later}
          - {status: 0, treat_as: permanent}
          - {status: 0x58, treat_as: throttled}
          - {status: 88, treat_as: temporary}
          - {status: 0x04, treat_as: bind}
        data_coding_0_alphabet: utf-8
        """), "    ")
    found = problems(tmp_path, bad)
    assert any("carriers[0].error_classes[0].treat_as: 'later' is not one of" in p for p in found)
    assert any("carriers[0].error_classes[1].status: 0 is out of range" in p for p in found)
    assert any("carriers[0].data_coding_0_alphabet: 'utf-8' is not one of" in p for p in found)
    fixed = bad.replace("treat_as: later", "treat_as: permanent").replace("status: 0,", "status: 0x14,")
    fixed = fixed.replace("data_coding_0_alphabet: utf-8", "data_coding_0_alphabet: ascii")
    assert problems(tmp_path, fixed) == [f"{tmp_path / 'gateway.yaml'}: carriers[0].error_classes[3].status: 0x00000058 is listed twice"]


def test_session_and_connection_caps_are_checked(tmp_path: Path) -> None:
    """check-config names smpp_server.max_connections and accounts[].max_sessions out of range."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "smpp_server:\n  max_connections: 0\n  accounts:\n"
        "    - {system_id: p, password: pw, max_sessions: 0}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    text = "\n".join(raised.value.problems)
    assert "smpp_server.max_connections" in text and "smpp_server.accounts[0].max_sessions" in text


def test_ami_secret_may_not_be_empty_while_ami_is_enabled(tmp_path: Path) -> None:
    """Asterisk refuses a login without the secret: check-config says so up front."""
    text = "ami:\n  enabled: true\n  secret: ${ASTERISK_AMI_SECRET:-}\n"
    found = problems(tmp_path, text)
    assert any("ami.secret: empty while ami.enabled is true: set ASTERISK_AMI_SECRET" in p for p in found), found
    config = load_config(write(tmp_path, text), environ={"ASTERISK_AMI_SECRET": "s3cret"})
    assert config.ami.secret.reveal() == "s3cret"
    load_config(write(tmp_path, "ami:\n  enabled: false\n  secret: ${ASTERISK_AMI_SECRET:-}\n"), environ={})


def test_the_ami_secret_variable_has_one_name() -> None:
    """gateway.yaml, dialplans/manager.conf and docs/ami.md name the same environment variable."""
    import re

    yaml_names = set(re.findall(r"secret: \$\{(\w+)", (REPO / "config" / "gateway.yaml").read_text(encoding="utf-8")))
    assert yaml_names == {"ASTERISK_AMI_SECRET"}
    for document in ("dialplans/manager.conf", "docs/ami.md", "dialplans/README.md"):
        text = (REPO / document).read_text(encoding="utf-8")
        named = set(re.findall(r"\b([A-Z_]*AMI_SECRET)\b", text))
        assert named <= yaml_names, (document, named)
    assert "ASTERISK_AMI_SECRET" in (REPO / "dialplans" / "manager.conf").read_text(encoding="utf-8")


def test_fastagi_allowlist_must_be_networks(tmp_path: Path) -> None:
    """check-config names an ivr.fastagi.allow entry that is not a CIDR network."""
    path = tmp_path / "gateway.yaml"
    path.write_text("ivr:\n  fastagi:\n    allow: [127.0.0.0/8, asterisk-host]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert any("ivr.fastagi.allow[1]: 'asterisk-host' is not a network" in p for p in raised.value.problems)


def test_china_broadnet_is_configurable_as_a_fourth_carrier(tmp_path: Path) -> None:
    """A fourth carrier (China Broadnet, 192) with its own failover policy loads."""
    broadnet = CARRIER + textwrap.indent(textwrap.dedent("""\
        accepts_other_carriers: true
      - name: cbn
        host: 127.0.0.1
        port: 2779
        system_id: gwcbn
        password: secret
        prefixes: ["192"]
        failover_after_seconds: 60
        validity_period: absolute
        priority_flag_high_lane: 2
    """), "  ")
    config = load_config(write(tmp_path, broadnet), environ={})
    assert [(c.name, c.prefixes, c.accepts_other_carriers) for c in config.carriers] == [
        ("cmcc", ("138",), True), ("cbn", ("192",), False)]
    assert config.carriers[1].failover_after_seconds == 60.0
    bad = broadnet.replace("failover_after_seconds: 60", "failover_after_seconds: -1")
    assert any("carriers[1].failover_after_seconds: -1.0 is out of range" in p for p in problems(tmp_path, bad))


def test_folders_the_gateway_creates_are_checked_where_it_will_create_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """state_dir, redis.data_dir and ivr.sounds_dir (relative to the working directory)
    with a file in the way are problems naming the key and the file; a folder that does
    not exist yet is fine (the gateway creates it)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    found = problems(tmp_path, f"""
        state_dir: blocker/state
        redis:
          data_dir: {blocker}/redis
        ivr:
          sounds_dir: {blocker}
        """)
    assert f"{tmp_path / 'gateway.yaml'}: state_dir: {blocker} is a file, not a directory" in found
    assert f"{tmp_path / 'gateway.yaml'}: redis.data_dir: {blocker} is a file, not a directory" in found
    assert f"{tmp_path / 'gateway.yaml'}: ivr.sounds_dir: {blocker} is a file, not a directory" in found


def test_folders_the_gateway_writes_are_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files the gateway reads are found beside the config; the folders it writes
    (state_dir too, since 2026-12-05) go where it runs, as systemd's WorkingDirectory
    (deploy/gateway12123.service keeps the config in /etc, read-only under
    ProtectSystem=strict: a hand-over file there could never be written).  Where state_dir
    was before stays known, for the hand-over file an earlier version left."""
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    monkeypatch.chdir(run)
    config = load_config(write(etc, CARRIER + "state_dir: not/yet\n"), environ={})
    assert config.state_path() == run / "not" / "yet"
    assert config.state_path_before() == etc / "not" / "yet"
    assert config.resolve(config.push.templates_file) == etc / "templates.yaml"
    assert Path(config.redis.data_dir).resolve() == run / "var" / "redis"
    assert Path(config.ivr.sounds_dir).resolve() == run / "var" / "sounds"


def test_a_data_dir_too_deep_for_the_embedded_servers_socket_is_refused(tmp_path: Path) -> None:
    """The embedded redis-server listens on <data_dir>/redis.sock; a path over 107 bytes
    makes it exit at start-up, so check-config says so first.  A remote Redis has no such
    socket: the same folder is then no problem."""
    deep = tmp_path / ("d" * (120 - len(str(tmp_path))))
    found = problems(tmp_path, f"redis:\n  data_dir: {deep}\n")
    [problem] = [p for p in found if "redis.data_dir" in p]
    assert "redis.sock would be" in problem and "at most 107" in problem
    config = load_config(write(tmp_path, CARRIER + f"redis:\n  url: redis://127.0.0.1:6379/0\n  data_dir: {deep}\n"),
                         environ={})
    assert config.redis.data_dir == str(deep)


def test_a_folder_name_the_file_system_refuses_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    """pathlib raises for a name over NAME_MAX instead of answering False."""
    found = problems(tmp_path, "state_dir: " + "s" * 300 + "\n")
    assert any(": state_dir: cannot use" in p and "File name too long" in p for p in found), found


def _with_sources(node: object) -> object:
    """A parsed document with each scalar that keeps its source text as (type, source)."""
    if isinstance(node, dict):
        return {_with_sources(k): _with_sources(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_sources(v) for v in node]
    source = getattr(node, "source", None)
    return (type(node).__name__, source, node) if source is not None else node


@pytest.mark.skipif(config_module._FastSourceLoader is None, reason="PyYAML built without libyaml")
def test_libyaml_reads_the_shipped_files_as_the_python_parser_does_and_errors_keep_its_words(tmp_path: Path) -> None:
    """Configs are parsed with libyaml (five times faster); every value of the three
    shipped files, its type and its source text are what the pure-Python parser gives.  A
    file that is not YAML is read again by the latter, whose message says what it found."""
    import yaml

    for name in ("gateway.yaml", "templates.yaml", "ivr.yaml"):
        text = (REPO / "config" / name).read_text(encoding="utf-8")
        fast = yaml.load(text, Loader=config_module._FastSourceLoader)  # noqa: S506 - CSafeLoader subclass
        slow = yaml.load(text, Loader=config_module._SourceLoader)  # noqa: S506 - SafeLoader subclass
        assert _with_sources(fast) == _with_sources(slow), name
    broken = tmp_path / "broken.yaml"
    broken.write_text("redis:\n\t- url\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        config_module.read_yaml(broken)
    assert excinfo.value.problems == [
        f"{broken}: line 2 column 1: not valid YAML: found character '\\t' that cannot start any token"]
