"""Batch iterators whose every batch is drawn from (seed, step) alone, so their state is the step."""

from __future__ import annotations

from typing import Any


class StepBatches:
    """Base of such iterators: `__next__` draws batch `self.step` and advances it; resuming sets it."""

    step = 0

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def __iter__(self):
        return self
