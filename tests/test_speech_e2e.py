"""End to end on real speech: eSpeak pairs -> units/tokenizer -> prepared records -> training ->
`most eval asr|tts` by generation. A tiny model that memorises a handful of pairs must give them
back through generation, which only works when the generation prompt matches the training format
(markers, instruction, response start) token for token."""

import dataclasses
import io
import json

import pytest
from cli_check import cli_error
from flax import nnx
from test_vocoder import GAN_TINY, tiny_cfg

from most_jax import cli
from most_jax.checkpoint.params_io import restore_model, save_params
from most_jax.config import config_from_dict, load_config, to_dict
from most_jax.data.pipeline import PreparedData, build_dataset
from most_jax.data.prepare import PrepareOptions, manifest_items, prepare
from most_jax.data.tasks import TEMPLATE_TEXTS
from most_jax.data.tokenizers import train_sentencepiece
from most_jax.eval.speech import load_eval_set
from most_jax.infer.generate import Sampling
from most_jax.infer.speech import synthesize_units
from most_jax.models.vocoder.model import Vocoder
from most_jax.speech import kmeans, units
from most_jax.speech.audio import load_audio
from most_jax.speech.manifest import read_manifest
from most_jax.corpus.synth import synthesize_corpus
from most_jax.train.loop import run_training

NUM_PAIRS = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    synthesize_corpus(root / "corpus", NUM_PAIRS, seed=3, workers=1, dev_fraction=0.0, test_fraction=0.0,
                      num_text_lm=400, log=lambda _: None)
    train_sentencepiece([root / "corpus" / "text_lm.txt"], root / "tok", 300, extra_lines=TEMPLATE_TEXTS)
    manifest = root / "corpus" / "train.jsonl"
    waves = [load_audio(e["audio"])[0] for e in read_manifest(manifest)]
    extractor = units.UnitExtractor.fit(waves, units.build_features("mfcc"), 25.0,
                                        options=kmeans.KMeansOptions(num_clusters=24, epochs=3, seed=0))
    extractor.save(root / "units")
    prepare(manifest_items(manifest), root / "prepared", PrepareOptions(str(root / "tok"), str(root / "units")),
            progress=None)
    layout = PreparedData(root / "prepared").layout
    cfg = load_config("configs/most_tiny.yaml", [
        "model.num_layers=2", "model.scan_layers=false", "data.seq_len=192", "data.batch_size=4",
        "data.mixture.asr=0.5", "data.mixture.tts=0.5", "data.mixture.text_lm=0", f"data.records={root / 'prepared'}",
        "train.steps=240", "train.lr=3e-3", "train.warmup_steps=20", "train.min_lr_ratio=0.01",
        "train.log_every=50", "train.checkpoint_every=1000", "train.async_checkpoint=false"])
    cfg = config_from_dict(to_dict(dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab=layout.config, vocab_size=layout.vocab_size))))
    result = run_training(cfg, root / "run", iter(build_dataset(cfg.data)), console=io.StringIO())
    return root, result


def _eval(capsys, task, root):
    capsys.readouterr()
    assert cli.main(["eval", task, str(root / "run"), "--data", str(root / "prepared"), "--json",
                     "--batch-size", "4"]) == 0
    return json.loads(capsys.readouterr().out)


def test_training_memorises_the_pairs(trained):
    _, result = trained
    assert result.step == 240
    assert result.last_record["loss_task/asr"] < 0.05 and result.last_record["loss_task/tts"] < 0.2, result.last_record


def test_eval_asr_gives_back_the_memorised_transcripts(trained, capsys):
    root, _ = trained
    out = _eval(capsys, "asr", root)
    assert out["utterances"] == NUM_PAIRS and out["words"] > 10
    assert out["wer"] <= 0.05, out["examples"]


def test_eval_tts_gives_back_the_memorised_units(trained, capsys):
    root, _ = trained
    out = _eval(capsys, "tts", root)
    assert out["utterances"] == NUM_PAIRS
    assert out["unit_accuracy"] >= 0.9 and out["unit_error_rate"] <= 0.1, out


def test_eval_tts_wer_and_its_floors(trained, capsys, tmp_path):
    """TTS WER through the memorised model as its own ASR and a random vocoder (hop 640: one 25 Hz
    unit). The original-audio floor is `most eval asr` on the manifest's audio; where the TTS wrote
    exactly the reference units, its transcript is the resynthesis floor's."""
    root, _ = trained
    vcfg = tiny_cfg(**{**GAN_TINY, "upsample_rates": [8, 80], "upsample_kernel_sizes": [16, 160]}, num_units=24)
    save_params(tmp_path / "voc", vcfg, nnx.state(Vocoder(vcfg.model, rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict())
    manifest = str(root / "corpus" / "train.jsonl")
    base = ["eval", "tts", str(root / "run"), "--data", manifest, "--batch-size", "4"]
    capsys.readouterr()
    assert cli.main([*base, "--asr", str(root / "run"), "--vocoder", str(tmp_path / "voc"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    capsys.readouterr()
    assert cli.main(["eval", "asr", str(root / "run"), "--data", manifest, "--batch-size", "4", "--json"]) == 0
    asr = json.loads(capsys.readouterr().out)
    assert out["floors"]["original"]["wer"] == asr["wer"] <= 0.05
    assert [ex["original"] for ex in out["examples"]] == [ex["hypothesis"] for ex in asr["examples"]]
    assert {"wer", "word_errors", "words"} <= set(out["tts_wer"]) and out["utterances"] == NUM_PAIRS
    tts = _eval(capsys, "tts", root)  # the generated units, from the prepared records' texts
    assert out["unit_accuracy"] == tts["unit_accuracy"]
    data = PreparedData(root / "prepared")
    items = load_eval_set(manifest, data)
    _, model = restore_model(root / "run", ["model.moe.dispatch=dropless"])
    units = synthesize_units(model, data, [it.text for it in items], sampling=Sampling(max_new_tokens=512),
                             batch_size=4)
    same = [i for i, (u, it) in enumerate(zip(units, items)) if u.tolist() == it.units.tolist()]
    assert same, "the memorised TTS wrote no utterance's units exactly"
    for i in same:
        assert out["examples"][i]["tts"] == out["examples"][i]["resynthesis"]
    cli_error([*base, "--asr", str(root / "run")], "TTS WER needs both --asr .* and --vocoder")
    cli_error([*base[:4], str(root / "prepared"), *base[5:], "--asr", str(root / "run"), "--vocoder",
               str(tmp_path / "voc")], "--data .*prepared: a prepared directory holds units, not audio")
    vcfg11 = tiny_cfg(**GAN_TINY, num_units=11)
    save_params(tmp_path / "voc11", vcfg11, nnx.state(Vocoder(vcfg11.model, rngs=nnx.Rngs(0)),
                                                      nnx.Param).to_pure_dict())
    cli_error([*base, "--asr", str(root / "run"), "--vocoder", str(tmp_path / "voc11")],
              "--vocoder .*voc11: 11 units, the TTS checkpoint speaks 24")


def _edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_vocoder_eval_against_a_per_utterance_reference(trained, capsys, tmp_path):
    """`most vocoder eval` of a random 25 Hz vocoder equals, utterance by utterance, the generator run
    alone on the true frame-level units, its log-mel against the original's, and a plain edit distance
    of what the extractor hears."""
    import jax.numpy as jnp
    import numpy as np

    from most_jax.data.vocoder_batches import aligned_units
    from most_jax.models.vocoder.duration import run_lengths
    from most_jax.models.vocoder.family import mel

    root, _ = trained
    vcfg = tiny_cfg(**{**GAN_TINY, "upsample_rates": [8, 80], "upsample_kernel_sizes": [16, 160]}, num_units=24)
    vocoder = Vocoder(vcfg.model, rngs=nnx.Rngs(1))
    save_params(tmp_path / "voc", vcfg, nnx.state(vocoder, nnx.Param).to_pure_dict())
    manifest = str(root / "corpus" / "train.jsonl")
    capsys.readouterr()
    assert cli.main(["vocoder", "eval", str(tmp_path / "voc"), "--units", str(root / "units"), "--manifest", manifest,
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    extractor = units.UnitExtractor.load(root / "units")
    mel_sum = frames = errors = ref_len = 0
    for entry in read_manifest(manifest):
        wave = load_audio(entry["audio"])[0].astype(np.float32)
        frame_units = aligned_units(extractor, wave)
        synth = np.asarray(vocoder.generator(jnp.asarray(frame_units[None])))[0]
        n = min(synth.size, wave.size)
        diff = np.abs(np.asarray(mel(vcfg.model, jnp.asarray(synth[None, :n])) -
                                 mel(vcfg.model, jnp.asarray(wave[None, :n]))))
        mel_sum, frames = mel_sum + diff.sum(), frames + diff.size
        ref = run_lengths(frame_units)[0].tolist()
        errors += _edit_distance(ref, extractor.extract(synth).tolist())
        ref_len += len(ref)
    assert out["utterances"] == NUM_PAIRS
    assert out["mel_l1"] == pytest.approx(mel_sum / frames, rel=1e-4)
    assert out["unit_error_rate"] == pytest.approx(errors / ref_len)
    assert out["predicted_durations_unit_error_rate"] is not None
    vcfg11 = tiny_cfg(**GAN_TINY, num_units=11)
    save_params(tmp_path / "voc11", vcfg11, nnx.state(Vocoder(vcfg11.model, rngs=nnx.Rngs(0)),
                                                      nnx.Param).to_pure_dict())
    cli_error(["vocoder", "eval", str(tmp_path / "voc11"), "--units", str(root / "units"), "--manifest", manifest],
              "--units .*: 24 units at 25 Hz, the vocoder speaks 11 units of 16 samples")
