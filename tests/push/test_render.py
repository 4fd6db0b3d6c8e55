"""Templates: the shipped file loads, every text is signed, and bad files name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.push.queue import Priority
from gateway.push.render import (
    MissingParameter,
    TemplateCatalogue,
    check_templates_file,
    load_templates,
    parse_validity,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "config" / "templates.yaml"

REQUIRED_TYPES = {
    "points_reached_9", "points_reached_12", "camera_violation", "inspection_due",
    "inspection_overdue", "inspection_missed_three_cycles", "scrapping_due",
    "licence_renewal_due", "licence_renewal_overdue", "licence_audit_due",
    "medical_certificate_due", "licence_cancelled", "exam_booking_confirmed",
    "exam_booking_cancelled", "exam_result", "id_card_ready", "verification_code",
    "mo_reply", "partner_text",
}


def test_shipped_templates_cover_every_required_type() -> None:
    """config/templates.yaml defines every notification type the pipeline promises."""
    templates = load_templates(TEMPLATES)
    assert REQUIRED_TYPES <= set(templates.templates)


def test_every_shipped_template_renders_signed() -> None:
    """Each type renders its example and starts with its service's signature; only the
    traffic service signs 【交管12123】."""
    templates = load_templates(TEMPLATES)
    for template in templates.templates.values():
        text = template.render(template.example)
        assert text.startswith(template.service.signature), template.type
        assert ("【交管12123】" in text) == (template.service.name == "traffic"), template.type
        assert "{" not in text


def test_transactional_types_ignore_quiet_hours_and_go_high() -> None:
    """Codes, booking messages and MO replies are never held and use the high lane."""
    templates = load_templates(TEMPLATES)
    for name in ("verification_code", "exam_booking_cancelled", "inspection_booking_confirmed", "mo_reply"):
        template = templates.templates[name]
        assert template.quiet_hours is False
        assert template.priority is Priority.HIGH
    assert templates.templates["inspection_due"].quiet_hours is True


def test_render_names_the_missing_parameter() -> None:
    """A missing or empty parameter raises MissingParameter naming it."""
    template = load_templates(TEMPLATES).templates["camera_violation"]
    with pytest.raises(MissingParameter) as info:
        template.render({"plate": "闽D12345", "time": "2026-01-02 08:00", "location": "", "violation": "闯红灯"})
    assert info.value.name == "location"


def test_signed_text_is_not_signed_twice() -> None:
    """An MO reply that already carries the signature keeps one."""
    template = load_templates(TEMPLATES).templates["mo_reply"]
    assert template.render({"text": "【交管12123】您好"}) == "【交管12123】您好"
    assert template.render({"text": "您好"}) == "【交管12123】您好"


def test_partner_texts_are_not_signed_by_us_and_wait_for_the_morning() -> None:
    """A partner's text goes out as the partner wrote it (no 【交管12123】) and is held in
    quiet hours like any other non-urgent notice."""
    template = load_templates(TEMPLATES).templates["partner_text"]
    assert template.render({"text": "【厦门驾培】周六练车"}) == "【厦门驾培】周六练车"
    assert template.render({"text": "周六练车"}) == "周六练车"
    assert template.quiet_hours is True


def test_household_notice_uses_its_own_signature_and_sender() -> None:
    """id_card_ready (household registration, seed 001) is not a 12123 notice: its own
    signature, its own sender code; traffic notices use the link's source (12123)."""
    templates = load_templates(TEMPLATES)
    text = templates.templates["id_card_ready"].render({"name": "张丽华", "office": "户政大厅"})
    assert text.startswith("【公安户政】") and "12123" not in text
    assert templates.source_addr("id_card_ready") == "12110"
    assert templates.source_addr("points_reached_9") is None


def test_a_traffic_signature_in_another_service_is_refused(tmp_path: Path) -> None:
    """A non-traffic type that carries 【交管12123】 is a configuration error."""
    path = _write(tmp_path, """
services:
  household: {signature: "【公安户政】", source_addr: "12110"}
types:
  id_card_ready:
    text: "【公安户政】{x}【交管12123】"
    params: [x]
    service: household
    validity: 1d
""")
    assert "types.id_card_ready.text" in "\n".join(_problems(path))


def _problems(path: Path) -> list[str]:
    try:
        load_templates(path)
    except ConfigError as e:
        return list(e.problems)
    return []


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "templates.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_unknown_placeholder_is_reported_with_file_and_key(tmp_path: Path) -> None:
    """A placeholder that is not among params is an error naming file, key and placeholder."""
    path = _write(tmp_path, """
types:
  inspection_due:
    text: "【交管12123】您的{plate}号牌机动车检验有效期至{due}。"
    params: [plate]
    validity: 7d
""")
    with pytest.raises(ConfigError) as info:
        load_templates(path)
    [problem] = info.value.problems
    assert problem.startswith(f"{path}: types.inspection_due.text:")
    assert "unknown placeholder {due}" in problem


def test_missing_signature_and_other_problems_are_all_reported(tmp_path: Path) -> None:
    """Every problem is collected: unsigned text, bad priority, bad validity, format spec."""
    path = _write(tmp_path, """
types:
  a:
    text: "您的验证码为{code}"
    params: [code]
    validity: 10m
  b:
    text: "【交管12123】{code!r}"
    params: [code]
    priority: urgent
    validity: soon
""")
    with pytest.raises(ConfigError) as info:
        load_templates(path)
    text = "\n".join(info.value.problems)
    assert "types.a.text: does not start with the signature" in text
    assert "types.b.text: placeholder {code} has a conversion or format spec" in text
    assert "types.b.priority: 'urgent' is not one of" in text
    assert "types.b.validity: 'soon' is not a duration" in text


def test_validity_units() -> None:
    """Durations are seconds, or a number with s, m, h or d."""
    assert parse_validity(600) == 600
    assert parse_validity("30m") == 1800
    assert parse_validity("72h") == 72 * 3600
    assert parse_validity("7d") == 7 * 86400
    with pytest.raises(ValueError):
        parse_validity("0s")


def test_reload_swaps_on_success_and_keeps_old_on_error(tmp_path: Path) -> None:
    """reload() takes a good new file, and keeps the old set when the new one is broken."""
    path = _write(tmp_path, 'types:\n  t:\n    text: "【交管12123】甲{x}"\n    params: [x]\n    validity: 60\n')
    catalogue = TemplateCatalogue(path)
    _write(tmp_path, 'types:\n  t:\n    text: "【交管12123】乙{x}"\n    params: [x]\n    validity: 60\n')
    catalogue.reload()
    assert catalogue.current.templates["t"].render({"x": "1"}) == "【交管12123】乙1"
    _write(tmp_path, 'types:\n  t:\n    text: "乙{x}"\n    params: [x]\n    validity: 60\n')
    with pytest.raises(ConfigError):
        catalogue.reload()
    assert catalogue.current.templates["t"].render({"x": "1"}) == "【交管12123】乙1"


def test_check_templates_file_reports_problems_for_check_config(tmp_path: Path) -> None:
    """check_templates_file(config) lists the templates file's problems (empty when fine)."""

    class Config:
        class push:  # noqa: N801 - mimics config.push.templates_file
            templates_file = "templates.yaml"

        @staticmethod
        def resolve(relative: str) -> Path:
            return tmp_path / relative

    _write(tmp_path, 'types:\n  t:\n    text: "无签名"\n    validity: 60\n')
    assert any("does not start with the signature" in p for p in check_templates_file(Config))
    _write(tmp_path, 'types:\n  t:\n    text: "【交管12123】好"\n    validity: 60\n')
    assert check_templates_file(Config) == []
