"""The skip budget: with `data.on_error=skip` a training run stops when a loader has skipped more
than `data.max_skip_fraction` of its epoch's samples, instead of training on what is left of a
broken data set (or spending the epoch rebuilding a DALI pipeline sample after sample).

Each loader counts what it leaves out (`skipped_samples`, deteclap.data.common.SkipLog) and says how
many samples its epoch holds, all ranks together (`epoch_samples`; 0: unknown, no budget). With one
rank the budget is exact; with several each rank compares its own skips with the whole epoch, so a
run stops at the latest when the ranks together skipped world_size times the fraction.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from deteclap.data.common import DataError

TOP_REASONS = 3


class SkipBudgetExceeded(DataError):
    """More of an epoch's samples were skipped than data.max_skip_fraction allows."""


def skip_budget_message(skipped: list[Any], epoch_samples: int, fraction: float) -> str | None:
    """Why `skipped` (deteclap.data.common.Skipped items) exceeds the budget, or None when it does not."""
    if epoch_samples <= 0 or len(skipped) <= fraction * epoch_samples:
        return None
    reasons = Counter(item.reason for item in skipped)
    top = []
    for reason, count in reasons.most_common(TOP_REASONS):
        first = next(item for item in skipped if item.reason == reason)
        top.append(f"{reason}: {count} (e.g. {first.shard}: sample {first.key})")
    more = f"; {len(reasons) - TOP_REASONS} more reasons" if len(reasons) > TOP_REASONS else ""
    return (f"{len(skipped)} of this epoch's {epoch_samples} samples were skipped "
            f"({len(skipped) / epoch_samples:.1%} > data.max_skip_fraction={fraction:g}); top reasons: "
            f"{'; '.join(top)}{more}. Fix or drop the bad data (`python -m deteclap.shard --verify SHARDS` "
            f"names every bad sample), or raise data.max_skip_fraction")


def check_skip_budget(loader: Any, fraction: float) -> None:
    """Raise SkipBudgetExceeded when `loader` skipped more than `fraction` of its epoch's samples."""
    message = skip_budget_message(getattr(loader, "skipped_samples", []), getattr(loader, "epoch_samples", 0),
                                  fraction)
    if message is not None:
        raise SkipBudgetExceeded(message)
