"""Every sample a training stage does not train on, counted by reason and named by key.

Three sources, each with its reasons:
- `reader: ...` — records the features stage could not use (missing image, malformed
  conversation; from `<features>/skips.json`) and images it could not encode (the manifest);
- `template: ...` — samples the template or tokenizer cannot train on (every answer token cut by
  `max_length`, a broken turn order), from the loader, in whichever worker process met them;
- `loader: ...` — samples read but not trained on in an epoch: the incomplete last batch, and the
  batches past the point where every rank has the same number (ranks stop together).

The first two are *bad* samples: their share of everything offered must stay under
`data.max_skip_share` (default 1 %), or the run stops and names the top reasons. The `loader` ones
are bookkeeping of a finite epoch, reported but not held against the data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

UNUSED = "loader"  # the reason prefix of samples read but not trained on (not bad data)


class TooManySkips(RuntimeError):
    """More bad samples than `data.max_skip_share` allows; the message names the top reasons."""


@dataclass
class SkipLedger:
    """Skipped sample keys by reason."""

    keys: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, key: str) -> None:
        self.keys.setdefault(reason, []).append(key)

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        """(key, reason) pairs."""
        for key, reason in items:
            self.add(reason, key)

    def merge(self, other: SkipLedger) -> None:
        for reason, keys in other.keys.items():
            self.keys.setdefault(reason, []).extend(keys)

    @property
    def counts(self) -> Counter[str]:
        return Counter({r: len(k) for r, k in self.keys.items()})

    @property
    def bad(self) -> int:
        return sum(n for r, n in self.counts.items() if not r.startswith(UNUSED))

    @property
    def unused(self) -> int:
        return sum(n for r, n in self.counts.items() if r.startswith(UNUSED))

    def top(self, n: int = 5, *, bad_only: bool = False) -> list[tuple[str, int]]:
        items = self.counts.most_common()
        return [(r, c) for r, c in items if not (bad_only and r.startswith(UNUSED))][:n]

    def describe(self, n: int = 5, *, bad_only: bool = False) -> str:
        return "; ".join(
            f"{reason}: {count} (e.g. {', '.join(self.keys[reason][:3])})"
            for reason, count in self.top(n, bad_only=bad_only)
        )

    def state(self) -> dict[str, list[str]]:
        return {r: list(k) for r, k in sorted(self.keys.items())}

    @classmethod
    def from_state(cls, state: dict[str, list[str]] | None) -> SkipLedger:
        return cls({r: list(k) for r, k in (state or {}).items()})

    def report(self, trained: int) -> dict[str, Any]:
        """The stage's skip report: deterministic for a deterministic run (sorted, no timings)."""
        offered = trained + self.bad + self.unused
        return {
            "trained": trained,
            "skipped_bad": self.bad,
            "unused": self.unused,
            "bad_share": self.bad / offered if offered else 0.0,
            "by_reason": dict(sorted(self.counts.items())),
            "keys": {r: sorted(k) for r, k in sorted(self.keys.items())},
        }


def check_share(bad: int, offered: int, limit: float, where: str, ledger: SkipLedger) -> None:
    """Stop when bad samples exceed `limit` of those offered."""
    if offered and bad / offered > limit:
        raise TooManySkips(
            f"{where}: {bad} of {offered} samples ({bad / offered:.1%}) were skipped as unusable, "
            f"more than data.max_skip_share={limit:g}; top reasons: "
            f"{ledger.describe(bad_only=True)}. Fix the data (or raise llm.max_length), or raise "
            "data.max_skip_share to accept it"
        )


def reason_of(message: str) -> str:
    """`key: reason: details` (a BadSample message) → a short reason to count by."""
    _, _, rest = message.partition(": ")
    return rest.split(" (")[0].split(":")[0][:80]
