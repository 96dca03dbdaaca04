"""`most demo` at toy scale: every stage's output, held-out sentences disjoint from training, the
summary and the curves, and re-runs that skip finished stages or resume training."""

import json

import numpy as np
import pytest

from most_jax import cli
from most_jax.config import ConfigError, load_demo_config
from most_jax.demo import STAGES, chained_keys, differences, stage_settings

TOY = ["--config", "configs/most_tiny.yaml",
       "--set", "model.num_layers=2", "--set", "model.scan_layers=false",
       "--set", "data.seq_len=256", "--set", "data.batch_size=4", "--set", "data.packing_bins=4",
       "--set", "train.steps=4", "--set", "train.log_every=2", "--set", "train.checkpoint_every=2",
       "--set", "demo.utterances=36", "--set", "demo.dev_utterances=6", "--set", "demo.test_utterances=6", "--set", "demo.text_lm_sentences=300",
       "--set", "demo.tokenizer_size=300", "--set", "demo.units_k=16", "--set", "demo.kmeans_epochs=2",
       "--set", "demo.workers=1", "--set", "demo.eval_batch_size=8", "--set", "demo.asr_max_new_tokens=6",
       "--set", "demo.tts_eval_utterances=1", "--set", "demo.tts_max_new_tokens=6"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _demo(out, capsys):
    capsys.readouterr()
    code = cli.main(["demo", "--out", str(out), *TOY])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out + captured.err


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert cli.main(["demo", "--out", str(out), *TOY]) == 0
    return out


def test_every_stage_writes_its_outputs(first_run):
    out = first_run
    for path in ("corpus/train.jsonl", "corpus/dev.jsonl", "corpus/test.jsonl", "corpus/text_lm.txt", "tokenizer/spm.model",
                 "units/units.json", "units/centroids.npy", "prepared/layout.json", "prepared/report.json",
                 "dev/report.json", "test/report.json", "train/metrics.jsonl", "eval.json", "summary.json", "stages.json"):
        assert (out / path).is_file(), path
    assert list((out / "train" / "checkpoints").glob("4/params"))
    ledger = json.loads((out / "stages.json").read_text())
    assert [name for name in STAGES[:-1] if ledger[name]["done"]] == list(STAGES[:-1])


def test_curves_are_a_png_of_the_task_losses(first_run):
    import matplotlib.pyplot as plt

    data = (first_run / "curves.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    image = plt.imread(first_run / "curves.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image[..., :3]) > 0.5  # something is drawn


def test_dev_and_test_sentences_never_occur_in_training_or_each_other(first_run):
    corpus = first_run / "corpus"
    train = {row["text"] for row in _lines(corpus / "train.jsonl")}
    text_lm = set(corpus.joinpath("text_lm.txt").read_text().splitlines())
    dev = {row["text"] for row in _lines(corpus / "dev.jsonl")}
    test = {row["text"] for row in _lines(corpus / "test.jsonl")}
    assert len(dev) == 6 and len(test) == 6 and len(train) == 24
    assert not test & (train | text_lm | dev) and not dev & (train | text_lm)
    # each WER was measured on exactly its split's utterances
    result = json.loads((first_run / "eval.json").read_text())
    for split, sentences in (("dev", dev), ("test", test)):
        assert {ex["reference"] for ex in result[f"asr_{split}"]["examples"]} == sentences


def test_summary_has_the_figures(first_run):
    summary = json.loads((first_run / "summary.json").read_text())
    assert 0.0 <= summary["wer"] and summary["words"] > 0 and summary["test_utterances"] == 6
    assert summary["word_errors"] == round(summary["wer"] * summary["words"])
    assert 0.0 <= summary["dev_wer"] and summary["dev_words"] > 0 and summary["dev_utterances"] == 6
    assert summary["dev_word_errors"] == round(summary["dev_wer"] * summary["dev_words"])
    assert set(summary["final_losses"]) >= {"step", "loss", "asr", "tts", "text_lm"}
    assert summary["final_losses"]["step"] == 4
    assert set(summary["stage_seconds"]) == set(STAGES)
    assert summary["total_seconds"] == pytest.approx(sum(summary["stage_seconds"].values()), abs=0.2)
    assert summary["stages_run"] == list(STAGES)
    sizes = summary["sizes"]
    assert sizes["utterances"]["test"] == 6 and sizes["utterances"]["dev"] == 6 and sizes["units_k"] == 16 and sizes["tokenizer_pieces"] == 300
    assert sizes["train_steps"] == 4 and 0 < sizes["active_params"] < sizes["params"]
    assert summary["tts"]["utterances"] == 1
    assert len(summary["machine"]["load_average_start"]) == 3


def test_a_rerun_skips_finished_stages_and_resumes_training(first_run, capsys):
    before = (first_run / "eval.json").read_text()
    log = _demo(first_run, capsys)
    for index, name in enumerate(STAGES[:-1], start=1):
        assert f"{index}/{len(STAGES)} {name}: done already" in log, name
    summary = json.loads((first_run / "summary.json").read_text())
    assert summary["stages_run"] == ["report"]
    assert (first_run / "eval.json").read_text() == before

    # A training stage left unfinished (as after SIGTERM) resumes from its checkpoint, keeping it.
    ledger_path = first_run / "stages.json"
    ledger = json.loads(ledger_path.read_text())
    ledger["train"]["done"] = False
    ledger_path.write_text(json.dumps(ledger))
    log = _demo(first_run, capsys)
    assert "5/7 train: resuming" in log and "nothing to do: the state is at step 4" in log
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
    assert cli.main(["demo", "--out", str(first_run), *TOY]) == 128 + 15
    assert "stopped by SIGTERM at step 3" in capsys.readouterr().err
    ledger = json.loads(ledger_path.read_text())
    assert not ledger["train"]["done"] and (first_run / "train" / "checkpoints").is_dir()


def test_changed_settings_rebuild_that_stage_and_the_later_ones():
    base = load_demo_config("configs/demo.yaml")
    changed = load_demo_config("configs/demo.yaml", ["demo.units_k=128"])
    old, new = chained_keys(stage_settings(*base)), chained_keys(stage_settings(*changed))
    assert [name for name in STAGES[:-1] if old[name] != new[name]] == ["units", "prepare", "train", "eval"]
    assert differences(old["units"], new["units"]) == ["settings.k"]
    retrained = chained_keys(stage_settings(*load_demo_config("configs/demo.yaml", ["train.lr=1e-3"])))
    assert [name for name in STAGES[:-1] if old[name] != retrained[name]] == ["train", "eval"]


@pytest.mark.parametrize("override, field", [
    ("demo.units_pooling=max", "demo.units_pooling"), ("demo.vocabulary=-5", "demo.vocabulary"),
    ("demo.rate_wpm=[150]", "demo.rate_wpm"), ("demo.units_min_run=0", "demo.units_min_run")])
def test_bad_demo_corpus_and_unit_settings_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_demo_config("configs/demo.yaml", [override])


def test_corpus_settings_rebuild_the_corpus_and_unit_pooling_the_units():
    base = chained_keys(stage_settings(*load_demo_config("configs/demo.yaml")))
    fewer = chained_keys(stage_settings(*load_demo_config("configs/demo.yaml", ["demo.voices=[en-us]"])))
    assert [name for name in STAGES[:-1] if base[name] != fewer[name]] == list(STAGES[:-1])
    pooled = chained_keys(stage_settings(*load_demo_config("configs/demo.yaml", ["demo.units_pooling=mean"])))
    assert differences(base["units"], pooled["units"]) == ["settings.pooling"]
    smoothed = chained_keys(stage_settings(*load_demo_config("configs/demo.yaml", ["demo.units_min_run=2"])))
    assert differences(base["units"], smoothed["units"]) == ["settings.min_run"]
    hubert = ["demo.units_features=hubert", "demo.units_hubert=/ck/hubert", "demo.units_hubert_layer=3"]
    heard = chained_keys(stage_settings(*load_demo_config("configs/demo.yaml", hubert)))
    assert sorted(differences(base["units"], heard["units"])) == ["settings.feature_options", "settings.features"]
    assert heard["units"]["settings"]["feature_options"] == {"checkpoint": "/ck/hubert", "layer": 3}
    for half in (hubert[:1], hubert[1:2]):  # a HuBERT kind without a checkpoint, or the reverse
        with pytest.raises(ConfigError, match=r"demo\.units_hubert"):
            load_demo_config("configs/demo.yaml", half)


def test_configured_vocabulary_and_records_do_not_key_the_training_stage():
    # both are replaced by the prepare stage's layout and records, which the train key chains
    base = chained_keys(stage_settings(*load_demo_config("configs/demo.yaml")))
    edited = chained_keys(stage_settings(*load_demo_config(
        "configs/demo.yaml", ["model.vocab_size=4096", "model.vocab.num_audio_units=100", "data.records=/elsewhere"])))
    assert base == edited


TINY_VOCODER = """\
model:
  family: vocoder
  num_units: 16
  unit_embed_dim: 8
  num_speakers: 0  # the toy corpus has 15 voices
  dur_hidden_dim: 8
  upsample_rates: [4]
  upsample_kernel_sizes: [8]
  upsample_initial_channel: 8
  resblock_kernel_sizes: [3]
  resblock_dilation_sizes: [[1]]
  istft_n_fft: 320
  istft_hop: 160
  adversarial: false
data: {seq_len: 16, batch_size: 2}
train: {lr: 1.0e-3, warmup_steps: 0, log_every: 1, checkpoint_every: 100}
"""


def test_full_adds_speech_out_and_keeps_the_finished_stages(first_run, tmp_path, capsys):
    """`most demo --full` after a plain run builds only the vocoder, speech and audio-LM stages; the
    TTS WER's original-audio floor is the eval stage's test WER (the same model hearing the same units)."""
    import shutil

    import soundfile as sf

    out = tmp_path / "full"
    shutil.copytree(first_run, out)
    (tmp_path / "voc.yaml").write_text(TINY_VOCODER)
    extra = ["--full", "--set", f"demo.vocoder_config={tmp_path / 'voc.yaml'}", "--set", "demo.vocoder_steps=3",
             "--set", "demo.tts_wav_sentences=2", "--set", "demo.tts_wer_utterances=6", "--set", "demo.audio_lm_pairs=3"]
    capsys.readouterr()
    assert cli.main(["demo", "--out", str(out), *TOY, *extra]) == 0
    captured = capsys.readouterr()
    for index, name in enumerate(STAGES[:-1], start=1):  # (train may resume: an earlier test leaves it unfinished)
        assert f"{index}/10 {name}: building" not in captured.err, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages_run"][-4:] == ["vocoder", "speech", "audio_lm", "report"]
    assert set(summary["stages_run"]) <= {"train", "vocoder", "speech", "audio_lm", "report"}
    assert summary["speech"]["vocoder"]["steps"] == 3 and summary["speech"]["utterances"] == 6
    assert summary["speech"]["floors"]["original"]["wer"] == json.loads((out / "eval.json").read_text())["asr_test"]["wer"]
    texts = json.loads((out / "tts_texts.json").read_text())
    test_texts = [json.loads(line)["text"] for line in (out / "corpus" / "test.jsonl").read_text().splitlines()]
    for entry in texts:
        wave, rate = sf.read(out / entry["file"])
        assert rate == 16000 and wave.size % 640 == 0 and wave.size / rate == pytest.approx(entry["seconds"], abs=0.01)
        assert entry["text"] in test_texts
    assert f"TTS WER {100 * summary['speech']['tts_wer']['wer']:.2f}%" in captured.out
    for name in ("lexical", "syntactic"):
        assert len((out / "audio_lm" / f"{name}.jsonl").read_text().splitlines()) == 3
        assert 0.0 <= summary["audio_lm"][name]["sum"] <= 1.0 and 0.0 <= summary["audio_lm"][name]["mean"] <= 1.0
    # the plain job on the same OUT leaves the speech stages alone
    assert cli.main(["demo", "--out", str(out), *TOY]) == 0
    assert "speech" not in json.loads((out / "summary.json").read_text())
