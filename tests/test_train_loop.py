"""The training loop on in-memory batches: memorisation, metrics files, params-checkpoint layout,
--init-from, and the stop after too many non-finite steps."""

import io
import json

import jax
import numpy as np
import pytest
from train_batches import SyntheticBatches

from most_jax.train.checkpoints import CheckpointError, TrainCheckpointManager
from most_jax.checkpoint.params_io import load_checkpoint, save_params
from most_jax.config import load_config
from most_jax.train.loop import CHECKPOINT_DIR, NonFiniteError, run_training
from most_jax.train.optimizer import make_optimizer
from most_jax.train.state import abstract_state, init_state, model_graphdef, single_device_mesh, state_shardings

FAST = ["model.num_layers=2", "model.scan_layers=false", "data.batch_size=4", "data.seq_len=24", "train.log_every=1"]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_short_run_memorises_a_batch(tmp_path):
    cfg = load_config("configs/most_tiny.yaml", FAST + [
        "train.steps=30", "train.lr=1e-2", "train.warmup_steps=3", "train.schedule=constant",
        "train.checkpoint_every=100", "train.log_every=5"])
    console = io.StringIO()
    result = run_training(cfg, tmp_path, SyntheticBatches(cfg.model.vocab, 4, 24, distinct=1), console=console)
    assert result.step == 30 and result.stopped_by is None
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    first, last = records[0], records[-1]
    assert last["loss"] < 0.3 * first["loss"], [r["loss"] for r in records]
    for key in ("ce_loss", "aux_loss", "grad_norm", "lr", "tokens_per_s", "step_time_s", "loss_task/asr",
                "loss_task/tts", "loss_modality/text", "loss_modality/audio", "load/text/max_over_mean",
                "load/audio/entropy", "dropped/text"):
        assert key in last, key
    assert len(last["load/audio/entropy"]) == cfg.model.num_moe_layers
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "step 30/30" in console.getvalue() and "ETA" in console.getvalue()
    # The final training checkpoint reads as a params checkpoint (params + config items).
    stored_cfg, params = load_checkpoint(tmp_path / CHECKPOINT_DIR)
    assert stored_cfg == cfg
    _, params_shape = model_graphdef(cfg.model)
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, params_shape)
    # The run dir now holds checkpoints: reusing it needs --resume, and resuming a finished run is a no-op.
    with pytest.raises(CheckpointError, match="--resume"):
        run_training(cfg, tmp_path, SyntheticBatches(cfg.model.vocab, 4, 24), console=io.StringIO())
    again = run_training(cfg, tmp_path, SyntheticBatches(cfg.model.vocab, 4, 24), resume=True, console=console)
    assert again.step == 30 and "nothing to do" in console.getvalue()


def test_nonfinite_streak_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = load_config("configs/most_tiny.yaml", FAST + [
        "train.steps=20", "train.checkpoint_every=3", "train.max_nonfinite=2"])
    poison = cfg.model.vocab.begin_wave_id
    # Imported weights (--init-from) with one unusable embedding row: finite until batches use it.
    _, params_shape = model_graphdef(cfg.model)
    optimizer = make_optimizer(cfg.train, params_shape)
    shardings = state_shardings(abstract_state(params_shape, optimizer, 0), single_device_mesh())
    params = jax.tree.map(np.array, jax.device_get(init_state(cfg.model, optimizer, 7, shardings).params))
    params["embed"]["embedding"][poison] = np.inf
    save_params(tmp_path / "init", cfg, params)

    batches = SyntheticBatches(cfg.model.vocab, 4, 24, poison_from=3, poison_id=poison)
    with pytest.raises(NonFiniteError, match=r"2 non-finite steps in a row.*\(step 3\)"):
        run_training(cfg, tmp_path / "run", batches, init_from=tmp_path / "init", console=io.StringIO())
    manager = TrainCheckpointManager(tmp_path / "run" / CHECKPOINT_DIR, keep=3)
    assert manager.all_steps() == [3]
    _, stored = load_checkpoint(tmp_path / "run" / CHECKPOINT_DIR)
    manager.close()
    emb = stored["embed"]["embedding"]
    assert np.isinf(emb[poison]).all() and np.isfinite(np.delete(emb, poison, axis=0)).all()
    # the checkpoint continued from the imported weights: rows the batches never touched are unchanged
    unused = cfg.model.vocab.end_wave_id
    np.testing.assert_array_equal(emb[unused], params["embed"]["embedding"][unused])
    records = _records(tmp_path / "run")
    assert [r["nonfinite_in_window"] for r in records] == [0, 0, 0, 1, 1]
    assert records[-1]["skipped_steps"] == 2
