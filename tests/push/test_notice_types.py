"""The 37 notice types of seed 003 (10 vehicle, 22 licence, 5 violation) and the service
types: each renders its example, with the character and SMS part counts pinned."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway.push.render import load_templates, sms_parts
from gateway.smpp.text import plan_message

TEMPLATES = load_templates(Path(__file__).resolve().parents[2] / "config" / "templates.yaml")

# type: (characters, UCS2 parts) of the example, signature included.  A text that grows
# past 70 characters costs a second SMS for every citizen: change this table on purpose.
EXPECTED = {
    "camera_violation": (68, 1),
    "violation_reminder": (66, 1),
    "fine_overdue": (57, 1),
    "points_reached_9": (64, 1),
    "points_reached_12": (61, 1),
    "inspection_due": (58, 1),
    "inspection_overdue": (64, 1),
    "inspection_missed_three_cycles": (54, 1),
    "scrapping_due": (55, 1),
    "scrapping_overdue": (56, 1),
    "transfer_in_overdue": (56, 1),
    "inspection_booking_confirmed": (65, 1),
    "plate_preselection_result": (60, 1),
    "vehicle_documents_void": (57, 1),
    "commercial_vehicle_violations": (49, 1),
    "licence_renewal_due": (63, 1),
    "licence_renewal_overdue": (57, 1),
    "licence_audit_due": (58, 1),
    "licence_audit_overdue": (61, 1),
    "medical_certificate_due": (53, 1),
    "medical_certificate_overdue": (62, 1),
    "medical_certificate_accepted": (50, 1),
    "licence_cancelled": (65, 1),
    "probation_points": (49, 1),
    "probation_end_exam": (57, 1),
    "full_points_study": (63, 1),
    "licence_downgraded": (53, 1),
    "extension_result": (61, 1),
    "documents_mailed": (64, 1),
    "delivery_refused": (52, 1),
    "pickup_reminder": (56, 1),
    "postal_blacklisted": (53, 1),
    "licence_issued": (46, 1),
    "exam_booking_confirmed": (119, 2),
    "exam_booking_unsuccessful": (63, 1),
    "exam_booking_cancelled": (63, 1),
    "exam_result": (64, 1),
    "id_card_ready": (49, 1),
    "verification_code": (40, 1),
    "mo_reply": (23, 1),
    "partner_text": (24, 1),
}


def test_seed_003_counts_37_notices_10_vehicle_22_licence_5_violation() -> None:
    """The catalogue holds the 37 notices of seed 003 by category, and nothing unlisted."""
    categories = Counter(t.category for t in TEMPLATES.templates.values())
    assert categories == {"vehicle": 10, "licence": 22, "violation": 5, "service": 4}
    assert set(TEMPLATES.templates) == set(EXPECTED)


@pytest.mark.parametrize("type_name", sorted(EXPECTED))
def test_every_type_renders_its_example_with_its_counts(type_name: str) -> None:
    """The example renders fully (no placeholder left, dates in Chinese) with the pinned
    character count, and the SMPP encoder agrees on the number of parts."""
    template = TEMPLATES.templates[type_name]
    assert set(template.required) <= set(template.example), "the example gives every required parameter"
    text = template.render(template.example)
    assert "{" not in text
    assert (len(text), sms_parts(text)) == EXPECTED[type_name], text
    assert len(plan_message(text, encoding="ucs2", reference=1).parts) == sms_parts(text)


def test_notices_fit_one_sms_where_the_content_allows() -> None:
    """Every notice but the booking confirmation (which must state the cancellation rule
    and the cost of a no-show, seed 001) fits one UCS2 part."""
    long = {name for name, (_, parts) in EXPECTED.items() if parts > 1}
    assert long == {"exam_booking_confirmed"}


def test_iso_dates_never_reach_the_citizen() -> None:
    """No rendered example shows an ISO date or a 24-hour clock after noon."""
    import re

    for template in TEMPLATES.templates.values():
        text = template.render(template.example)
        assert not re.search(r"\d{4}-\d{2}-\d{2}", text), template.type
        assert not re.search(r"(?<!\d)(1[3-9]|2[0-3]):\d{2}", text), template.type


def test_docs_table_shows_every_type_as_rendered() -> None:
    """docs/notifications.md lists every type with its rendered example and counts."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "notifications.md").read_text(encoding="utf-8")
    for name, (chars, parts) in EXPECTED.items():
        template = TEMPLATES.templates[name]
        row = f"| {template.render(template.example)} | {chars} | {parts} |"
        assert f"| `{name}` | {template.category} |" in docs and row in docs, name
