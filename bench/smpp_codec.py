"""Micro-benchmark of the SMPP codec hot path: PDUs encoded and decoded per second.

Run: ``.venv/bin/python bench/smpp_codec.py [--seconds 1.0]``.  Prints a table, then one
JSON line (``{"bench": "smpp_codec", ...}``) for scripts to collect.

Cases are what the gateway does per notification: encode a submit_sm of one part of
a 2-part Chinese UCS2 message (with UDH), decode its submit_sm_resp, decode a
deliver_sm receipt with receipted_message_id/message_state TLVs; and the reverse
directions, which the carrier simulator runs.  ``plan_message`` (splitting the text
into parts) is measured too, per message.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.smpp.pdu import DeliverSm, SubmitSm, SubmitSmResp, decode, encode  # noqa: E402
from gateway.smpp.receipts import receipt_from_deliver  # noqa: E402
from gateway.smpp.text import plan_message  # noqa: E402
from gateway.smpp.tlv import Tlv, TlvTag  # noqa: E402

TEXT = (
    "【交管12123】尊敬的驾驶人，您的机动车驾驶证将于2025年03月01日有效期满，"
    "请于期满前90日内到车辆管理所或通过交管12123申请换证。逾期未换证的，驾驶证将被注销。"
    "如有疑问请拨打12123咨询。"
)


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (batches of 1000, best of 3)."""
    best = 0.0
    for _ in range(3):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for _ in range(1000):
                fn()
            n += 1000
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per case")
    args = parser.parse_args()

    plan = plan_message(TEXT, reference=42)
    assert plan.parts_count == 2, plan.parts_count
    part = plan.parts[0]
    submit = SubmitSm(
        sequence_number=123456,
        source_addr="12123",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="8613800138000",
        esm_class=part.esm_class,
        registered_delivery=1,
        data_coding=part.data_coding,
        short_message=part.short_message,
    )
    submit_wire = encode(submit)
    resp = SubmitSmResp(123456, message_id="1f0a2b3c4d5e6f70")
    resp_wire = encode(resp)
    receipt = DeliverSm(
        98765,
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="8613800138000",
        destination_addr="12123",
        esm_class=0x04,
        short_message=(
            b"id:1f0a2b3c4d5e6f70 sub:001 dlvrd:001 submit date:2501151230 "
            b"done date:2501151231 stat:DELIVRD err:000 text:"
        ),
        tlvs=(
            Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, "1f0a2b3c4d5e6f70"),
            Tlv.uint8(TlvTag.MESSAGE_STATE, 2),
        ),
    )
    receipt_wire = encode(receipt)
    decoded_receipt = decode(receipt_wire)
    assert isinstance(decoded_receipt, DeliverSm)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("encode submit_sm (UCS2 part, UDH)", lambda: encode(submit)),
        ("decode submit_sm", lambda: decode(submit_wire)),
        ("encode submit_sm_resp", lambda: encode(resp)),
        ("decode submit_sm_resp", lambda: decode(resp_wire)),
        ("encode deliver_sm (receipt, 2 TLVs)", lambda: encode(receipt)),
        ("decode deliver_sm (receipt, 2 TLVs)", lambda: decode(receipt_wire)),
        ("receipt_from_deliver", lambda: receipt_from_deliver(decoded_receipt)),
        ("plan_message (2-part Chinese)", lambda: plan_message(TEXT, reference=42)),
    ]
    results = {}
    width = max(len(name) for name, _ in cases)
    print(f"{'case':<{width}}  {'per second':>12}  {'µs each':>8}")
    for name, fn in cases:
        per_second = rate(fn, args.seconds)
        results[name] = round(per_second)
        print(f"{name:<{width}}  {per_second:>12,.0f}  {1e6 / per_second:>8.2f}")
    print(
        json.dumps(
            {
                "bench": "smpp_codec",
                "python": platform.python_version(),
                "per_second": results,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
