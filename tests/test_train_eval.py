"""The trainer's held-out evaluation (train/evaluation.py): its losses against a plain forward pass
and a float64 cross-entropy of the checkpointed parameters, exact resume, and its errors."""

import io
import json

import numpy as np
import pytest
import yaml
from data_corpus import make_prepared, make_tokenizer, tiny_model_config

from most_jax.checkpoint.params_io import restore_model
from most_jax.config import ConfigError, load_config
from most_jax.data.pipeline import PipelineError, PreparedData, build_dataset, build_eval_batches
from most_jax.data.tasks import TASK_IDS
from most_jax.train.loop import CHECKPOINT_DIR, run_training

STEPS = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tok = make_tokenizer(root / "tok")
    train = make_prepared(root / "train", tok)
    held_out = make_prepared(root / "dev", tok, num_pairs=12, num_text=0, num_dialogs=0, num_shards=1, seed=7)
    return root, train, held_out


def _config(root, train, held_out, overrides=()):
    cfg = tiny_model_config(train)
    cfg["data"] = {"records": str(train), "eval_records": str(held_out), "seq_len": 128, "batch_size": 4,
                   "mixture": {"asr": 0.4, "tts": 0.4, "text_lm": 0.2}}
    cfg["train"] = {"steps": STEPS, "warmup_steps": 1, "lr": 3e-3, "log_every": 1, "checkpoint_every": 2,
                    "eval_every": 2, "eval_batches": 3, "micro_batches": 2}
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path, list(overrides))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


def _reference(model, batches):
    """Token-weighted float64 cross-entropy of the model's logits on the loss positions: overall
    and on the ASR task's tokens."""
    total = count = asr = asr_count = 0.0
    for b in batches:
        logits, _ = model(b["tokens"], modality_BT=b["modality"], segment_ids_BT=b["segment_ids"],
                          positions_BT=b["positions"])
        logits = np.asarray(logits, np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        nll = -np.take_along_axis(log_probs, b["targets"][..., None], -1)[..., 0]
        mask = b["loss_mask"] > 0
        total, count = total + nll[mask].sum(), count + mask.sum()
        on_asr = mask & (b["task"] == TASK_IDS["asr"])
        asr, asr_count = asr + nll[on_asr].sum(), asr_count + on_asr.sum()
    return total / count, asr / asr_count


def test_eval_losses_equal_a_plain_forward_pass_and_resume_exactly(corpus, tmp_path):
    root, train, held_out = corpus
    cfg = _config(root, train, held_out)
    straight = tmp_path / "straight"
    run_training(cfg, straight, iter(build_dataset(cfg.data)), console=io.StringIO())
    records = _records(straight)
    assert [r["step"] for r in records] == [2, 4, 5]  # every eval_every steps and the last
    assert records[0]["ce_loss"] > records[-1]["ce_loss"]  # it learns
    assert {"loss_task/asr", "loss_task/tts"} <= set(records[-1]) and "loss_task/text_lm" not in records[-1]

    batches = build_eval_batches(cfg.data, PreparedData(held_out), 3)
    _, model = restore_model(straight / CHECKPOINT_DIR)
    ce, asr = _reference(model, batches)
    assert records[-1]["ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert records[-1]["loss_task/asr"] == pytest.approx(asr, rel=1e-5)

    stopped = tmp_path / "stopped"
    run_training(cfg, stopped, iter(build_dataset(cfg.data)), stop_after=3, console=io.StringIO())
    assert [r["step"] for r in _records(stopped)] == [2]
    console = io.StringIO()
    run_training(cfg, stopped, iter(build_dataset(cfg.data)), resume=True, console=console)
    assert [r["ce_loss"] for r in _records(stopped)] == [r["ce_loss"] for r in records]
    assert "[eval] step 4: held-out ce_loss" in console.getvalue()


def test_eval_batches_are_fixed_and_only_the_tasks_the_records_hold(corpus):
    root, train, held_out = corpus
    cfg = _config(root, train, held_out)
    first, again = (build_eval_batches(cfg.data, PreparedData(held_out), 2) for _ in range(2))
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    tasks = set(np.concatenate([b["task"].ravel() for b in first])) - {-1}
    assert tasks == {TASK_IDS["asr"], TASK_IDS["tts"]}  # no text-LM lines in a dev split of pairs


def test_eval_errors_name_the_setting(corpus, tmp_path):
    root, train, held_out = corpus
    with pytest.raises(ConfigError, match="train.eval_every: 2 asks for a held-out evaluation.*eval_records"):
        _config(root, train, held_out, ["data.eval_records=null"])
    only_text = _config(root, train, held_out, ["data.mixture.asr=0", "data.mixture.tts=0"])
    with pytest.raises(PipelineError, match="data.eval_records: .*dev has no records for the mixture's tasks"):
        run_training(only_text, tmp_path / "text", iter(build_dataset(only_text.data)), console=io.StringIO())
    short_rows = _config(root, train, held_out, ["data.seq_len=60"])
    with pytest.raises(PipelineError, match="no asr record of .*dev fits data.seq_len=60 .the shortest is 64"):
        run_training(short_rows, tmp_path / "short", iter(build_dataset(short_rows.data)), console=io.StringIO())
    other = make_prepared(tmp_path / "other", make_tokenizer(tmp_path / "tok2", vocab_size=450), num_text=0)
    wrong = _config(root, train, other)
    with pytest.raises(ConfigError, match="does not match the vocabulary of .*other"):
        run_training(wrong, tmp_path / "wrong", iter(build_dataset(wrong.data)), console=io.StringIO())
