"""The trainer's held-out evaluation: the loss on fixed batches of `data.eval_records`, every
`train.eval_every` steps and at the run's last step, written to RUN_DIR/eval.jsonl.

The batches are drawn once (Family.eval_batches) and scored with the step's parameters by a
jitted forward pass (train/step.py make_eval_step); their sums are added up in float64 on the host
and summarised by the family as a training window is, so an eval record has the same entries as
a metrics record (MoST: ce_loss, loss_task/*, loss_modality/*, expert load) for held-out data.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from most_jax.config import Config, ConfigError
from most_jax.models.family import get_family
from most_jax.train.step import check_batch, make_eval_step, put_batch


class HeldOutEval:
    """The held-out batches of a run (checked once against the step's batch spec) and the jitted
    forward pass that scores them; `due(step)` says when, calling it makes the record."""

    def __init__(self, cfg: Config, graphdef, params_sharding: Any, batch_sharding: NamedSharding, spec: dict):
        family = get_family(cfg.model)
        if family.eval_batches is None:
            raise ConfigError(f"train.eval_every: the {family.name} family has no held-out evaluation in the "
                              "trainer; set it to 0")
        self.cfg, self.family, self.batch_sharding = cfg, family, batch_sharding
        self.batches = family.eval_batches(cfg)
        rows = next(iter(spec.values())).shape[0] // jax.process_count()
        for i, batch in enumerate(self.batches):
            try:
                check_batch(batch, spec, rows=rows)
                family.check_batch(batch, cfg.model)
            except ValueError as e:
                raise ValueError(f"held-out batch {i} of data.eval_records={cfg.data.eval_records}: {e}") from None
        self.keys = list(spec)
        self.step_fn = make_eval_step(graphdef, cfg, params_sharding=params_sharding, batch_sharding=batch_sharding)

    def due(self, step: int) -> bool:
        return step % self.cfg.train.eval_every == 0 or step == self.cfg.train.steps

    def __call__(self, params: Any, step: int) -> dict[str, Any]:
        """The eval record of the parameters after `step` steps."""
        started = time.perf_counter()
        totals: dict[str, np.ndarray] = {}
        for batch in self.batches:
            sums = jax.device_get(self.step_fn(params, put_batch({k: batch[k] for k in self.keys},
                                                                  self.batch_sharding)))
            for key, value in sums.items():
                value = np.asarray(value, np.float64)
                totals[key] = totals[key] + value if key in totals else value
        rec = {"step": step, **self.family.summarise(self.cfg, totals, len(self.batches))}
        rec["eval_batches"] = len(self.batches)
        rec["eval_seconds"] = time.perf_counter() - started
        return rec
