"""The training loop: thin glue around the jitted step, the data iterator, metrics and checkpoints.

Step t's metrics are read (device_get) only after step t+1 has been dispatched, so the host never
stalls the device. Checkpoints are saved every `train.checkpoint_every` steps, at the end, when
SIGTERM/SIGINT arrives (then the loop exits cleanly) and at `stop_after`; with train.eval_every the
held-out loss is scored every that many steps and at the end (train/evaluation.py). A run of
`train.max_nonfinite` non-finite steps stops with NonFiniteError and saves nothing more, leaving the
last good checkpoint as the latest.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TextIO

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from most_jax.checkpoint import param_tree
from most_jax.checkpoint.param_tree import flatten
from most_jax.checkpoint.params_io import load_checkpoint
from most_jax.config import Config, ConfigError, config_from_dict, to_dict
from most_jax.models.family import frozen_mask, get_family, step_batch_specs, with_data_params
from most_jax.train.checkpoints import CheckpointError, TrainCheckpointManager
from most_jax.train.evaluation import HeldOutEval
from most_jax.train.metrics import MetricsLogger, MetricsWindow
from most_jax.train.optimizer import learning_rate_schedule, make_family_optimizer
from most_jax.train.state import (TrainState, abstract_state, init_state, model_graphdef, replicated_shardings,
                                  single_device_mesh, state_shardings)
from most_jax.train.step import batch_sharding_for, check_batch, make_train_step, put_batch

CHECKPOINT_DIR = "checkpoints"


class BatchIterator(Protocol):
    """What the loop needs from the data pipeline (a Grain DatasetIterator fits)."""

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row."""


@dataclasses.dataclass
class RunResult:
    step: int  # the state's step when the loop ended
    stopped_by: str | None  # "SIGTERM", "SIGINT", "stop_after" or None (ran to train.steps)
    last_record: dict[str, Any] | None  # the final metrics record


class _StopSignals:
    """SIGTERM/SIGINT set a flag the loop checks between steps; a second signal acts as usual."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous[signum])

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_training(cfg: Config, run_dir: str | Path, batches: BatchIterator, *, resume: bool = False,
                 init_from: str | Path | None = None, stop_after: int | None = None, mesh: Mesh | None = None,
                 param_shardings: Callable[[Any, Mesh], Any] = replicated_shardings,
                 batch_sharding: NamedSharding | None = None, console: TextIO | None = None) -> RunResult:
    """Trains `cfg.train.steps` steps (or until `stop_after`) writing to `run_dir`.

    resume: continue from the latest checkpoint in run_dir (a fresh start if there is none);
        without it, a run_dir that already holds checkpoints is an error.
    init_from: a params checkpoint (e.g. from `most import-hf`) to start from; optimizer fresh.
    mesh, param_shardings, batch_sharding: where state and batches live (default: one device;
        batch rows over the mesh's `data` axis).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    console = console or sys.stderr  # resolved per call: a default bound at import goes stale
    mesh = mesh or single_device_mesh()
    batch_sharding = batch_sharding or batch_sharding_for(mesh)

    def say(message: str) -> None:
        console.write(f"[train] {message}\n")
        console.flush()

    ckpt = TrainCheckpointManager(run_dir / CHECKPOINT_DIR, keep=cfg.train.keep, async_save=cfg.train.async_checkpoint)
    try:
        return _start(cfg, run_dir, batches, ckpt, say, console, resume=resume, init_from=init_from,
                      stop_after=stop_after, mesh=mesh, param_shardings=param_shardings, batch_sharding=batch_sharding)
    finally:
        ckpt.wait()
        ckpt.close()


def _start(cfg: Config, run_dir: Path, batches: BatchIterator, ckpt: TrainCheckpointManager, say, console, *,
           resume: bool, init_from, stop_after, mesh: Mesh, param_shardings, batch_sharding) -> RunResult:
    """Restores or initialises the state, then runs the loop."""
    graphdef, params_shape = model_graphdef(cfg.model)
    optimizer = make_family_optimizer(cfg.train, params_shape, frozen_mask(cfg.model, params_shape),
                                      get_family(cfg.model).phases)
    schedule = learning_rate_schedule(cfg.train)
    abstract = abstract_state(params_shape, optimizer, cfg.train.seed)
    shardings = state_shardings(abstract, mesh, param_shardings)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    latest = ckpt.latest_step()
    if latest is not None and not resume:
        raise CheckpointError(f"{ckpt.directory} already holds checkpoints (latest step {latest}); pass --resume "
                              "to continue that run or choose another --run-dir")
    if latest is not None:
        _check_resumable(ckpt.read_config(latest), cfg, ckpt.directory / str(latest), say)
        state, data_state = ckpt.restore(latest, target)
        batches.set_state(data_state)
        say(f"resumed from {ckpt.directory / str(latest)}")
    else:
        if resume:
            say(f"no checkpoint in {ckpt.directory}; starting from scratch")
        params = None if init_from is None else _load_init_params(init_from, params_shape)
        state = init_state(cfg.model, optimizer, cfg.train.seed, shardings, params)
        if init_from is not None:
            say(f"parameters from {init_from}")
        else:
            # Leaves the data determines (U2++'s global CMVN) replace their initial values; the
            # optimizer state (zeros) does not depend on them.
            state = state._replace(params=jax.device_put(with_data_params(cfg, state.params), shardings.params))
    held_out = None
    if cfg.train.eval_every:
        held_out = HeldOutEval(cfg, graphdef, shardings.params, batch_sharding, get_family(cfg.model).batch_spec(cfg))
        say(f"held-out evaluation every {cfg.train.eval_every} steps on {len(held_out.batches)} batches of "
            f"{cfg.data.eval_records}")
    return _Loop(cfg, run_dir, batches, ckpt, say, console).run(
        state, make_train_step(graphdef, cfg, optimizer, schedule, state_shardings=shardings,
                               batch_sharding=batch_sharding),
        target, batch_sharding, stop_after, held_out)


class _Loop:
    def __init__(self, cfg: Config, run_dir: Path, batches: BatchIterator, ckpt: TrainCheckpointManager,
                 say: Callable[[str], None], console: TextIO):
        self.cfg, self.run_dir, self.batches, self.ckpt, self.say, self.console = cfg, run_dir, batches, ckpt, say, console

    def run(self, state: TrainState, step_fn, target: TrainState, batch_sharding, stop_after: int | None,
            held_out: HeldOutEval | None) -> RunResult:
        cfg = self.cfg.train
        step = int(jax.device_get(state.step))
        end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
        if step >= end:
            self.say(f"nothing to do: the state is at step {step}, the run ends at step {end}")
            return RunResult(step, None, None)
        family = get_family(self.cfg.model)
        specs = step_batch_specs(self.cfg)
        local_rows = next(iter(specs[0].values())).shape[0] // jax.process_count()
        compiled: dict[int, Any] = {}

        def step_for(batch) -> tuple[dict, Any]:
            """The batch's spec and the step compiled for it (one per shape, on first use)."""
            which = _matching_spec(batch, specs, local_rows)
            if which not in compiled:
                spec = specs[which]
                abstract = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sharding) for k, s in spec.items()}
                started = time.perf_counter()
                compiled[which] = step_fn.lower(target, abstract).compile()
                seconds = time.perf_counter() - started
                self.window.start += seconds  # throughput counts steps, not compilation
                shape = ", ".join(f"{k} {list(s.shape)}" for k, s in spec.items())
                self.say(f"compiled the train step in {seconds:.1f} s for {shape}")
            return specs[which], compiled[which]

        self.say(f"steps {step + 1}..{end} of {cfg.steps}, run dir {self.run_dir}")
        self.logger = MetricsLogger(self.run_dir, total_steps=cfg.steps, start_step=step, stream=self.console)
        self.window = MetricsWindow(self.cfg)
        self.last_record = None
        stopped_by = None
        pending = None
        try:
            with _StopSignals() as signals:
                while step < end:
                    if signals.received:
                        stopped_by = signals.received
                        break
                    batch = _next_batch(self.batches, step)
                    spec, step_compiled = step_for(batch)
                    family.check_batch(batch, self.cfg.model)
                    state, metrics = step_compiled(state, put_batch({k: batch[k] for k in spec}, batch_sharding))
                    step += 1
                    if pending is not None:
                        self._consume(*pending, end)
                    pending = (step, metrics)
                    if held_out is not None and held_out.due(step):
                        started = time.perf_counter()
                        self.logger.write_eval(held_out(state.params, step))
                        self.window.start += time.perf_counter() - started  # throughput counts training
                    if step % cfg.checkpoint_every == 0:
                        # the iterator stands right after this step's batch until the next `next`
                        self.ckpt.save(state, data_state=self.batches.get_state(), cfg=self.cfg)
                if pending is not None:
                    self._consume(*pending, end, final=True)
                if stopped_by is None and step < cfg.steps:
                    stopped_by = "stop_after"
                saved = self.ckpt.save(state, data_state=self.batches.get_state(), cfg=self.cfg)
                self.ckpt.wait()
        finally:
            self.logger.close()
        how = {None: "finished", "stop_after": "stopped as asked"}.get(stopped_by, f"stopped by {stopped_by}")
        self.say(f"{how} at step {step}; checkpoint {self.ckpt.directory / str(saved)}")
        return RunResult(step, stopped_by, self.last_record)

    def _consume(self, step: int, metrics: dict[str, jax.Array], end: int, final: bool = False) -> None:
        """Host side of step `step`: accumulate its metrics, log, and stop on a non-finite streak."""
        host = jax.device_get(metrics)
        self.window.add(host)
        streak = int(host["nonfinite_streak"])
        if streak >= self.cfg.train.max_nonfinite:
            self._log(step)
            raise NonFiniteError(
                f"step {step}: {streak} non-finite steps in a row (loss {float(host['loss'])}, grad norm "
                f"{float(host['grad_norm'])}), train.max_nonfinite={self.cfg.train.max_nonfinite}; stopping. Updates of "
                f"those steps were skipped; the latest checkpoint in {self.ckpt.directory} "
                f"(step {self.ckpt.latest_step()}) holds the last good state. Lower train.lr or check the data.")
        if not bool(host["finite"]):
            self.say(f"step {step}: non-finite loss or gradient, update skipped ({streak} in a row)")
        if step % self.cfg.train.log_every == 0 or step == end or final:
            self._log(step)

    def _log(self, step: int) -> None:
        if self.window.steps == 0:
            return
        now = time.perf_counter()
        self.last_record = self.window.record(step, now)
        self.logger.write(self.last_record)
        self.window.reset(now)


def _matching_spec(batch: dict[str, np.ndarray], specs: tuple[dict, ...], rows: int) -> int:
    """Index of the spec whose shapes the batch has (rows: this process's share); a batch matching
    none fails check_batch against the last (largest) spec, which names the offending key."""
    for i, spec in enumerate(specs):
        if all(k in batch and np.shape(batch[k]) == (rows, *s.shape[1:]) for k, s in spec.items()):
            check_batch(batch, spec, rows=rows)
            return i
    check_batch(batch, specs[-1], rows=rows)
    raise ValueError(f"batch shapes {({k: np.shape(v) for k, v in batch.items()})} match none of the "
                     f"{len(specs)} step shapes of the model family")


def _next_batch(batches: Iterator, step: int) -> dict[str, np.ndarray]:
    try:
        return next(batches)
    except StopIteration:
        raise RuntimeError(f"the data iterator ran out before step {step + 1}; training data should repeat") from None


def _check_resumable(stored: dict[str, Any], cfg: Config, where: Path, say: Callable[[str], None]) -> None:
    """The stored config must build the same parameters; other differences are only reported."""
    try:
        stored_cfg = config_from_dict(stored)
    except ConfigError as e:
        raise CheckpointError(f"{where}/config: {e}") from None
    if param_tree.abstract_params(stored_cfg.model) != param_tree.abstract_params(cfg.model):
        raise CheckpointError(f"{where}: the checkpoint's model has different parameters than the configured one; "
                              "resume with the model config it was written with")
    # Against the stored config as it loads (defaults filled in), so a field added since the
    # checkpoint was written (e.g. model.family) is no difference.
    stored = to_dict(stored_cfg)
    differing = [".".join(p) for p, v in flatten(to_dict(cfg)) if _lookup(stored, p) != v]
    if differing:
        say(f"config differs from the checkpoint's in: {', '.join(differing)}")


def _lookup(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _load_init_params(path: str | Path, params_shape: Any) -> Any:
    """Params of a params checkpoint, checked leaf by leaf against the model and cast to its dtypes."""
    _, params = load_checkpoint(path)
    want = dict(flatten(params_shape))
    have = dict(flatten(params))
    problems = [f"{'.'.join(p)}: missing" for p in want if p not in have]
    problems += [f"{'.'.join(p)}: not in this model" for p in have if p not in want]
    problems += [f"{'.'.join(p)}: shape {have[p].shape}, the model needs {want[p].shape}" for p in want
                 if p in have and have[p].shape != want[p].shape]
    if problems:
        raise CheckpointError(f"--init-from {path}: parameters do not fit the configured model: " + "; ".join(problems))
    return jax.tree.map(lambda x, a: x.astype(a.dtype), params, params_shape)
