"""/metrics follows Prometheus conventions, and the shipped alert rules and Grafana
dashboard parse and use only metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client import generate_latest

import gateway.app  # noqa: F401 - imports every part, so every metric is registered
import gateway.fleet.account  # noqa: F401
import gateway.fleet.clock  # noqa: F401
import gateway.ivr.reminders  # noqa: F401
import gateway.ops.fleet  # noqa: F401
import gateway.push.service  # noqa: F401
from gateway import metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def exported_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
    return names


def test_every_metric_has_the_project_prefix_and_no_created_series() -> None:
    """gateway12123_ on every name, counters end in _total, no *_created, build_info is 1."""
    families = list(metrics.REGISTRY.collect())
    assert families
    for family in families:
        assert family.name.startswith("gateway12123_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
    text = generate_latest(metrics.REGISTRY).decode()
    assert "_created" not in text
    assert re.search(r'^gateway12123_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)


def _used_names(text: str) -> set[str]:
    return set(re.findall(r"gateway12123_[a-z0-9_]+", text))


def test_alert_rules_and_dashboard_use_exported_metrics() -> None:
    """Every gateway12123_* name in deploy/ is one /metrics can carry."""
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text(encoding="utf-8"))
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exported = exported_names()
    used = set().union(*(_used_names(e) for e in exprs))
    assert used, "no gateway12123 metric referenced"
    unknown = {name for name in used if name not in exported and not any(
        name.endswith(s) and name[: -len(s)] in exported for s in _SUFFIXES)}
    assert not unknown, unknown


def test_alert_rules_and_dashboard_queries_parse() -> None:
    """Every expression in deploy/ parses as PromQL (promql-parser, a port of Prometheus's
    own parser): one broken rule makes Prometheus refuse the whole rules file, and with
    it every alert."""
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text(encoding="utf-8"))
    exprs = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs |= {f"{panel['title']} #{n}": target["expr"] for panel in dashboard["panels"]
              for n, target in enumerate(panel["targets"])}
    unparsable = {}
    for name, expr in exprs.items():
        try:
            promql_parser.parse(expr)
        except ValueError as e:
            unparsable[name] = str(e)
    assert not unparsable, unparsable
    assert len(exprs) > 20
    with pytest.raises(ValueError, match="invalid promql"):
        promql_parser.parse("sum(rate(gateway12123_receipts_total[15m])) >")  # the parser does refuse
