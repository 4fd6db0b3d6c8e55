"""Motor vehicles on the register: plate, owner, inspection due date, status.

The plate is the key (``vehicle:闽D12345``, UTF-8 in Redis); the owner's plates are a set
under ``person-vehicles:<id>``.  Seed 004 lists the vehicle notices the platform sends
(inspection overdue, three missed inspection cycles, scrapping within a year); those are
produced by the core systems, this module only reads the records for queries.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from enum import Enum

from redis.asyncio import Redis

from gateway.domain import CorruptRecord, decode_hash, decode_text, format_cn_date, parse_iso_date
from gateway.domain.people import normalise_id_number
from gateway.privacy import IdNumber
from gateway.store.keys import Keys

__all__ = [
    "Vehicle",
    "VehicleStatus",
    "VehicleStore",
    "normalise_plate",
    "vehicle_from_hash",
    "vehicle_summary",
    "vehicle_to_hash",
]

# One province character, the issuing-office letter, then five (ordinary) or six (new
# energy) letters/digits.  Enough to refuse junk from a keypad or an SMS before it becomes
# part of a Redis key.
_PLATE = re.compile(r"[\u4e00-\u9fff][A-Z][A-Z0-9]{5,6}")


def normalise_plate(text: str) -> str | None:
    """The plate in canonical form (full-width folded, upper case, no spaces/dots), or None."""
    cleaned = unicodedata.normalize("NFKC", text).upper()
    cleaned = re.sub(r"[\s·.\-]", "", cleaned)
    return cleaned if _PLATE.fullmatch(cleaned) else None


class VehicleStatus(Enum):
    """Vehicle status as the register shows it (机动车状态)."""

    NORMAL = "normal"
    INSPECTION_OVERDUE = "inspection_overdue"
    SCRAP_DUE = "scrap_due"
    MORTGAGED = "mortgaged"
    SEIZED = "seized"
    STOLEN = "stolen"
    SCRAPPED = "scrapped"

    @property
    def label(self) -> str:
        return _VEHICLE_LABELS[self]

    @classmethod
    def from_stored(cls, text: str) -> VehicleStatus:
        """Parse the stored code; the Chinese label is accepted too."""
        try:
            return cls(text)
        except ValueError:
            pass
        for status, label in _VEHICLE_LABELS.items():
            if label == text:
                return status
        raise CorruptRecord("unknown vehicle status")


_VEHICLE_LABELS = {
    VehicleStatus.NORMAL: "正常",
    VehicleStatus.INSPECTION_OVERDUE: "逾期未检验",
    VehicleStatus.SCRAP_DUE: "达到报废标准",
    VehicleStatus.MORTGAGED: "抵押",
    VehicleStatus.SEIZED: "查封",
    VehicleStatus.STOLEN: "被盗抢",
    VehicleStatus.SCRAPPED: "已注销",
}


@dataclass(frozen=True)
class Vehicle:
    plate: str
    owner_id: IdNumber
    vehicle_type: str  # 车辆类型 as registered, e.g. "小型普通客车"
    inspection_due: date  # last day of the current inspection validity (检验有效期至)
    status: VehicleStatus

    def inspection_overdue(self, today: date) -> bool:
        """True once the inspection validity has ended, whatever the register status says yet."""
        return today > self.inspection_due


def vehicle_to_hash(vehicle: Vehicle) -> dict[str, str]:
    return {
        "plate": vehicle.plate,
        "owner_id": vehicle.owner_id.digits,
        "vehicle_type": vehicle.vehicle_type,
        "inspection_due": vehicle.inspection_due.isoformat(),
        "status": vehicle.status.value,
    }


def vehicle_from_hash(fields: dict[str, str]) -> Vehicle:
    """Build a Vehicle from its hash; raises CorruptRecord when the schema is broken."""
    try:
        return Vehicle(
            plate=fields["plate"],
            owner_id=IdNumber(fields["owner_id"]),
            vehicle_type=fields.get("vehicle_type", ""),
            inspection_due=parse_iso_date(fields["inspection_due"], field="inspection_due"),
            status=VehicleStatus.from_stored(fields["status"]),
        )
    except KeyError as missing:
        raise CorruptRecord(f"vehicle record lacks {missing.args[0]}") from None


class VehicleStore:
    """Reads vehicles from Redis (hash ``vehicle:<plate>``, set ``person-vehicles:<id>``)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, plate: str) -> Vehicle | None:
        """The vehicle with this plate, or None (also for text not shaped as a plate)."""
        canonical = normalise_plate(plate)
        if canonical is None:
            return None
        raw = await self._redis.hgetall(self._keys.vehicle(canonical))
        return vehicle_from_hash(decode_hash(raw)) if raw else None

    async def for_owner(self, id_number: str) -> list[Vehicle]:
        """The owner's vehicles, by plate; records whose owner changed are left out."""
        owner = normalise_id_number(id_number)
        if owner is None:
            return []
        plates = sorted(
            decode_text(m) for m in await self._redis.smembers(self._keys.vehicles_of_person(owner))
        )
        if not plates:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for plate in plates:
                pipe.hgetall(self._keys.vehicle(plate))
            replies = await pipe.execute()
        vehicles = [vehicle_from_hash(decode_hash(raw)) for raw in replies if raw]
        return [v for v in vehicles if v.owner_id.digits == owner]


def vehicle_summary(vehicle: Vehicle, *, today: date) -> str:
    """Vehicle text for an SMS reply or a voice prompt, e.g.

    "闽D12345（小型普通客车）：检验有效期至2027年3月31日，状态：正常"; an overdue inspection
    adds "，已逾期未检验" even before the register's status catches up.
    """
    kind = f"（{vehicle.vehicle_type}）" if vehicle.vehicle_type else ""
    text = (
        f"{vehicle.plate}{kind}：检验有效期至{format_cn_date(vehicle.inspection_due)}，"
        f"状态：{vehicle.status.label}"
    )
    if vehicle.inspection_overdue(today) and vehicle.status is not VehicleStatus.INSPECTION_OVERDUE:
        text += "，已逾期未检验"
    return text
