"""`most sweep`: a tiny 2-size ladder trained, skipped when rerun, resumed after an interruption,
and its results table read by `most scaling fit` (most_jax/scaling/sweep.py)."""

import io
import json

import pytest
from data_corpus import make_prepared, make_tokenizer

from most_jax.cli import main
from most_jax.scaling.accounting import config_budget
from most_jax.scaling.results import read_results
from most_jax.scaling.sweep import SweepError, launch_commands, plan, run_sweep

SPEC = """config: most_tiny.yaml
tokens_per_param: 0.04
variants: [dense, moe]
experts: {num_experts: 4, top_k: 2, num_shared_experts: 1}
evals_per_run: 2
checkpoints_per_run: 2
sizes:
  - {name: a, hidden_size: 32, num_layers: 2, num_heads: 2, lr: 3.0e-3}
  - {name: b, hidden_size: 48, num_layers: 2, num_heads: 2}
"""
SETTINGS = ["data.seq_len=160", "data.batch_size=2", "train.async_checkpoint=false"]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    prepared = make_prepared(root / "prepared", make_tokenizer(root / "tok"))
    spec = root / "ladder.yaml"
    spec.write_text(SPEC)
    return spec, prepared, root


def _lines(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_sweep_trains_skips_resumes_and_fits(ladder):
    spec, prepared, root = ladder
    out = root / "out"
    runs = plan(spec, SETTINGS, prepared)
    assert [r.name for r in runs] == ["a-dense", "a-moe", "b-dense", "b-moe"]
    assert all(3 <= r.config.train.steps <= 12 for r in runs), [r.config.train.steps for r in runs]
    # An interrupted sweep: the first run stops after 2 steps with a checkpoint and no result.
    log = io.StringIO()
    summary = run_sweep(runs, out, console=log, stop_after=2)
    assert summary["pending"] == [r.name for r in runs] and not (out / "results.jsonl").exists()
    # The rerun resumes it from that checkpoint, then trains the others.
    log = io.StringIO()
    assert run_sweep(runs, out, console=log)["trained"] == [r.name for r in runs]
    assert f"resumed from {out / 'runs' / 'a-dense' / 'checkpoints' / '2'}" in log.getvalue()
    records = _lines(out)
    assert [r["run"] for r in records] == [r.name for r in runs]
    for run, rec in zip(runs, records):
        budget, per_step = config_budget(run.config)
        assert rec["variant"] == run.variant and rec["params_active"] == budget.params_active
        assert rec["tokens"] == run.config.train.steps * per_step
        assert rec["flops"] == rec["tokens"] * budget.train_flops_per_token
        assert [e["step"] for e in rec["evals"]][-1] == run.config.train.steps == rec["steps"]
        assert rec["loss"] == rec["evals"][-1]["loss"] > 0 and rec["loss_text"] > 0 and rec["loss_audio"] > 0
        assert rec["wall_s"] > 0
    first = records[0]["evals"]
    assert [e["step"] for e in first] == sorted({e["step"] for e in first})  # one history across the resume
    # Rerun: every run is skipped and the table is unchanged.
    before = (out / "results.jsonl").read_text()
    assert run_sweep(runs, out, console=io.StringIO())["skipped"] == [r.name for r in runs]
    assert (out / "results.jsonl").read_text() == before
    # A changed config under a finished run's name is refused (size a keeps its own lr: b-dense is first).
    with pytest.raises(SweepError, match="b-dense.*another config"):
        run_sweep(plan(spec, [*SETTINGS, "train.lr=1e-4"], prepared), out, console=io.StringIO())
    # The table is the one `most scaling fit` reads.
    assert len(read_results(out)) == 4
    assert main(["scaling", "fit", str(out), "--json", "--bootstrap", "4", "--no-plots"]) == 0


def test_launch_commands_and_filters(ladder, tmp_path, capsys):
    spec, prepared, _ = ladder
    runs = plan(spec, SETTINGS, prepared, sizes=["b"], variants=["moe"])
    assert [r.name for r in runs] == ["b-moe"]
    (slurm,) = launch_commands(runs, tmp_path, "slurm")
    assert slurm.startswith("sbatch --job-name=b-moe") and f"--config {tmp_path / 'configs' / 'b-moe.yaml'}" in slurm
    (pod,) = launch_commands(runs, tmp_path, "tpu_pod")
    assert "--worker=all" in pod and "--resume" in pod
    assert main(["sweep", str(spec), "--out", str(tmp_path), "--records", str(prepared), "--sizes", "c"]) == 2
    assert "--sizes: c not in the ladder" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--out", str(tmp_path), "--records", str(tmp_path)]) == 2
    assert "--records" in capsys.readouterr().err


def test_sweep_on_held_out_records(ladder, tmp_path):
    """--eval-records: every log window also scores held-out batches, and those are the results' losses."""
    spec, prepared, root = ladder
    dev = make_prepared(tmp_path / "dev", root / "tok" / "tok", num_pairs=16, num_text=0, num_dialogs=0, seed=5)
    runs = plan(spec, SETTINGS, prepared, sizes=["a"], variants=["dense"], eval_records=dev)
    cfg = runs[0].config
    assert cfg.data.eval_records == str(dev) and cfg.train.eval_every == cfg.train.log_every
    assert run_sweep(runs, tmp_path / "out", console=io.StringIO())["trained"] == ["a-dense"]
    (rec,) = _lines(tmp_path / "out")
    run_dir = tmp_path / "out" / "runs" / "a-dense"
    held_out = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rec["loss_source"] == "held_out" and [e["step"] for e in rec["evals"]] == [r["step"] for r in held_out]
    assert rec["loss"] == held_out[-1]["ce_loss"] != train[-1]["ce_loss"]
    assert rec["loss_audio"] == held_out[-1]["loss_modality/audio"]
