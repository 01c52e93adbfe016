"""The GPU ledger: every admitted claim (an endpoint's replicas, a quantization Job), one ConfigMap.

Why one object for the whole cluster: guarantees make teams depend on each other (a team that
borrows unreserved GPUs competes with every other borrower), so admissions must be serialised
cluster-wide, and the API server's optimistic concurrency on one object's ``resourceVersion`` is
exactly that: two operators (or two workers) that read the same version cannot both write a
claim; the loser re-reads, re-decides and may be refused. The ConfigMap lives in the operator's
namespace, created by the chart, and only the operator may write it.

One data key per claim, the claim's object UID (unique for the object's lifetime, so a deleted
and re-created endpoint of the same name is a new claim), with a compact JSON value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

ENDPOINT_KIND = "DedicatedEndpoint"
QUANTIZED_MODEL_KIND = "QuantizedModel"
KINDS = (ENDPOINT_KIND, QUANTIZED_MODEL_KIND)


class LedgerError(ValueError):
    """A ledger entry cannot be read; names the key."""


@dataclass(frozen=True)
class Claim:
    """GPUs one object holds (or asks to hold) on one pool."""

    uid: str
    kind: str  # DedicatedEndpoint | QuantizedModel
    namespace: str
    name: str
    pool: str
    family: str
    gpus: int
    detail: str = ""  # e.g. "2 replicas x 4 GPUs", for messages

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LedgerError(f"claim {self.uid}: unknown kind {self.kind!r}")
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 0:
            raise LedgerError(f"claim {self.uid}: gpus must be a non-negative integer, not {self.gpus!r}")

    @property
    def noun(self) -> str:
        return "endpoint" if self.kind == ENDPOINT_KIND else "quantization Job"

    def same_holding(self, other: Claim | None) -> bool:
        """Whether ``other`` records exactly this holding (nothing to write)."""
        return other is not None and (self.kind, self.namespace, self.name, self.pool, self.family, self.gpus) == \
            (other.kind, other.namespace, other.name, other.pool, other.family, other.gpus)

    def encode(self) -> str:
        data = {"k": self.kind, "ns": self.namespace, "n": self.name, "p": self.pool, "f": self.family,
                "g": self.gpus}
        if self.detail:
            data["d"] = self.detail
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, uid: str, text: str) -> Claim:
        try:
            d = json.loads(text)
            return cls(uid=uid, kind=d["k"], namespace=d["ns"], name=d["n"], pool=d["p"], family=d["f"],
                       gpus=d["g"], detail=d.get("d", ""))
        except (ValueError, KeyError, TypeError) as err:
            raise LedgerError(f"ledger entry {uid}: unreadable ({err})") from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_ledger(data: Mapping[str, str] | None) -> tuple[dict[str, Claim], list[str]]:
    """Claims by UID from a ConfigMap's ``data``, and the keys that could not be read.

    An unreadable entry is reported, not fatal: it is dropped at the next write (it would
    otherwise block every admission), and the objects it belonged to are re-claimed from what
    runs by the quota resync.
    """
    claims: dict[str, Claim] = {}
    bad: list[str] = []
    for uid, text in (data or {}).items():
        try:
            claims[uid] = Claim.decode(uid, text)
        except LedgerError:
            bad.append(uid)
    return claims, bad


def ledger_patch(claims_before: Mapping[str, Claim], claims_after: Mapping[str, Claim],
                 bad_keys: list[str] | tuple[str, ...] = ()) -> dict[str, str | None]:
    """The ``data`` part of a JSON merge patch turning one claim set into the other."""
    patch: dict[str, str | None] = {uid: None for uid in claims_before if uid not in claims_after}
    patch.update({uid: None for uid in bad_keys})
    for uid, claim in claims_after.items():
        before = claims_before.get(uid)
        if before is None or before.encode() != claim.encode():
            patch[uid] = claim.encode()
    return patch
