"""`most demo u2pp` at toy scale: every stage's outputs, dev and test sentences disjoint from
training, a WER per split and decoding mode, the summary and the curves, and re-runs that skip
finished stages or resume an interrupted training run."""

import json

import numpy as np
import pytest

from most_jax import cli
from most_jax.config import ConfigError, U2ppDemoConfig, load_demo_config
from most_jax.demo_u2pp import STAGES, mode_names, stage_settings
from most_jax.stages import chained_keys, differences

CONFIG = "configs/u2pp_demo.yaml"
# One length bucket, so the train step compiles once.
TOY = ["--set", "model.encoder.output_size=16", "--set", "model.encoder.attention_heads=2",
       "--set", "model.encoder.linear_units=12", "--set", "model.encoder.num_blocks=1",
       "--set", "model.encoder.cnn_module_kernel=3", "--set", "model.decoder.attention_heads=2",
       "--set", "model.decoder.linear_units=12", "--set", "model.decoder.num_blocks=1",
       "--set", "data.batch_size=4", "--set", "data.speech.bucket_frames=[800]",
       "--set", "train.steps=4", "--set", "train.warmup_steps=2", "--set", "train.log_every=2",
       "--set", "train.checkpoint_every=2",
       "--set", "demo.utterances=36", "--set", "demo.dev_utterances=5", "--set", "demo.test_utterances=6",
       "--set", "demo.workers=1", "--set", "demo.eval_batch_size=8", "--set", "demo.beam=2"]
MODES = ("attention_rescoring", "ctc_greedy", "streaming_chunk16", "streaming_chunk4")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _demo(out, capsys):
    capsys.readouterr()
    code = cli.main(["demo", "u2pp", "--out", str(out), *TOY])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out + captured.err


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("u2pp_demo") / "out"
    assert cli.main(["demo", "u2pp", "--out", str(out), *TOY]) == 0
    return out


def test_every_stage_writes_its_outputs(first_run):
    out = first_run
    for path in ("corpus/train.jsonl", "corpus/dev.jsonl", "corpus/test.jsonl", "tokenizer/spm.model",
                 "prepared/u2pp.json", "prepared/global_cmvn.json", "dev/u2pp.json", "test/u2pp.json",
                 "train/metrics.jsonl", "eval.json", "summary.json", "stages.json"):
        assert (out / path).is_file(), path
    assert list((out / "train" / "checkpoints").glob("4/params"))
    ledger = json.loads((out / "stages.json").read_text())
    assert [name for name in STAGES[:-1] if ledger[name]["done"]] == list(STAGES[:-1])
    data = (out / "curves.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_dev_and_test_sentences_never_occur_in_training(first_run):
    corpus = first_run / "corpus"
    train, dev, test = ({row["text"] for row in _lines(corpus / f"{split}.jsonl")} for split in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (25, 5, 6)
    assert not (dev | test) & train and not dev & test
    # each split's WER was measured on exactly its own utterances
    result = json.loads((first_run / "eval.json").read_text())
    for split, texts in (("dev", dev), ("test", test)):
        assert result[split]["utterances"] == len(texts)
        assert {ex["reference"] for ex in result[split]["ctc_greedy"]["examples"]} == texts


def test_summary_has_a_wer_per_split_and_mode(first_run):
    summary = json.loads((first_run / "summary.json").read_text())
    result = json.loads((first_run / "eval.json").read_text())
    assert mode_names(U2ppDemoConfig()) == MODES
    for split in ("dev", "test"):
        assert tuple(summary["wer"][split]) == MODES
        for mode in MODES:
            scored = result[split][mode]
            assert summary["wer"][split][mode] == scored["wer"] == scored["word_errors"] / scored["words"]
            assert scored["words"] == summary["words"][split] > 0
    assert summary["final_losses"]["step"] == 4 and np.isfinite(summary["final_losses"]["loss_ctc"])
    assert set(summary["stage_seconds"]) == set(STAGES)
    assert summary["total_seconds"] == pytest.approx(sum(summary["stage_seconds"].values()), abs=0.2)
    assert summary["stages_run"] == list(STAGES)
    sizes = summary["sizes"]
    assert sizes["utterances"] == {"train": 25, "dev": 5, "test": 6} and sizes["train_steps"] == 4
    assert sizes["vocab_size"] == sizes["tokenizer_pieces"] + 2
    assert 0 < sizes["active_params"] < sizes["params"]  # 2 of 8 experts per frame
    machine = summary["machine"]
    assert machine["cpu_model"] and len(machine["load_average_start"]) == 3


def test_a_rerun_skips_finished_stages_and_resumes_training(first_run, capsys):
    before = (first_run / "eval.json").read_text()
    log = _demo(first_run, capsys)
    for index, name in enumerate(STAGES[:-1], start=1):
        assert f"{index}/{len(STAGES)} {name}: done already" in log, name
    assert json.loads((first_run / "summary.json").read_text())["stages_run"] == ["report"]
    assert (first_run / "eval.json").read_text() == before
    assert "streaming_chunk4" in log and "dev (5 utt)" in log  # the WER table

    # A training stage left unfinished (as after SIGTERM) resumes from its checkpoint, keeping it.
    ledger_path = first_run / "stages.json"
    ledger = json.loads(ledger_path.read_text())
    ledger["train"]["done"] = False
    ledger_path.write_text(json.dumps(ledger))
    log = _demo(first_run, capsys)
    assert "4/6 train: resuming" in log and "nothing to do: the state is at step 4" in log
    assert json.loads((first_run / "summary.json").read_text())["stages_run"] == ["train", "report"]


def test_training_stopped_by_sigterm_exits_143_and_stays_resumable(first_run, capsys, monkeypatch):
    from most_jax.train import loop

    ledger_path = first_run / "stages.json"
    ledger = json.loads(ledger_path.read_text())
    ledger["train"]["done"] = False
    ledger_path.write_text(json.dumps(ledger))
    # what run_training returns after its SIGTERM handler saved a checkpoint mid-run
    monkeypatch.setattr(loop, "run_training", lambda *a, **k: loop.RunResult(3, "SIGTERM", None))
    capsys.readouterr()
    assert cli.main(["demo", "u2pp", "--out", str(first_run), *TOY]) == 128 + 15
    assert "most demo u2pp: training stopped by SIGTERM at step 3" in capsys.readouterr().err
    ledger = json.loads(ledger_path.read_text())
    assert not ledger["train"]["done"] and (first_run / "train" / "checkpoints").is_dir()


def _keys(overrides=()):
    return chained_keys(stage_settings(*load_demo_config(CONFIG, list(overrides), U2ppDemoConfig)))


def test_changed_settings_rebuild_that_stage_and_the_later_ones():
    base = _keys()
    assert list(base) == list(STAGES[:-1])
    decoding = _keys(["demo.beam=4"])
    assert [name for name in base if base[name] != decoding[name]] == ["eval"]
    retrained = _keys(["train.lr=2e-3"])
    assert [name for name in base if base[name] != retrained[name]] == ["train", "eval"]
    resplit = _keys(["demo.dev_utterances=300"])
    assert [name for name in base if base[name] != resplit[name]] == list(STAGES[:-1])
    assert differences(base["corpus"], resplit["corpus"]) == ["settings.dev_utterances"]
    # the vocabulary size and the records come from the prepare stage, whose key the train key chains
    assert _keys(["model.vocab_size=999", "data.records=/elsewhere"]) == base


@pytest.mark.parametrize("override, field", [
    ("demo.dev_utterances=0", "demo.dev_utterances"), ("demo.streaming_chunks=[16, 0]", "demo.streaming_chunks"),
    ("demo.dev_utterances=20000", "demo.test_utterances"), ("demo.units_k=64", "demo.units_k")])
def test_bad_demo_settings_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_demo_config(CONFIG, [override], U2ppDemoConfig)


def test_a_most_config_is_refused_by_name(tmp_path, capsys):
    code = cli.main(["demo", "u2pp", "--out", str(tmp_path / "x"), "--config", "configs/demo.yaml"])
    err = capsys.readouterr().err
    assert code == 2 and "demo.text_lm_sentences" in err.strip().splitlines()[-1]
