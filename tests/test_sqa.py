"""Spoken question answering: the built-in fact world and its splits, the answer matching rules,
`most data sqa` -> `most data prepare` -> spoken_qa records, and `most eval sqa` on a tiny model that
memorises a handful of spoken questions (S->T), with S->S through a random vocoder."""

import dataclasses
import io
import json

import pytest
from cli_check import cli_error
from flax import nnx
from test_vocoder import GAN_TINY, tiny_cfg

from most_jax import cli
from most_jax.checkpoint.params_io import save_params
from most_jax.config import config_from_dict, load_config, to_dict
from most_jax.corpus import qa
from most_jax.data.pipeline import PreparedData, build_dataset
from most_jax.data.prepare import PrepareOptions, manifest_items, prepare, text_items
from most_jax.data.tasks import TEMPLATE_TEXTS
from most_jax.data.tokenizers import train_sentencepiece
from most_jax.eval.sqa import answer_matches
from most_jax.eval.wer import normalize
from most_jax.models.vocoder.model import Vocoder
from most_jax.speech import kmeans, units
from most_jax.speech.audio import load_audio
from most_jax.train.loop import run_training


@pytest.mark.parametrize("answer,response,right", [
    ("Paris", "paris", True), ("Paris", "She lives in Paris.", True), ("New York", "in new york city", True),
    ("paris", "parisian", False), ("New York", "york new", False), ("Paris", "", False), ("", "paris", False),
    ("January", "In JANUARY!", True), ("a koala", "koala", False)])
def test_answer_matching_rules(answer, response, right):
    assert answer_matches(answer, response) is right


def test_fact_world_splits_by_fact_and_states_every_fact():
    facts = qa.world(40, seed=3)
    assert facts == qa.world(40, seed=3) and facts != qa.world(40, seed=4)
    assert len({f.person for f in facts}) == 40 and len(facts) == 40 * len(qa.RELATIONS)
    dialogs = qa.dialogs(facts, seed=3, dev_fraction=0.1, test_fraction=0.2)
    by_fact = {}
    for d in dialogs:
        by_fact.setdefault(d.id.split("-")[0], set()).add(d.split)
    assert all(len(splits) == 1 for splits in by_fact.values())  # a fact's questions stay in one split
    counts = {s: sum(1 for d in dialogs if d.split == s) for s in qa.SPLITS}
    assert counts == {"train": 2 * 140, "dev": 2 * 20, "test": 2 * 40}
    for d in dialogs:
        fact = facts[int(d.id[2:7])]
        assert fact.person.title() in d.question and normalize(d.answer) == normalize(fact.value)
        assert answer_matches(d.answer, fact.statement) and answer_matches(d.answer, d.spoken_answer)
    with pytest.raises(ValueError, match="people must be in 1..156"):
        qa.world(500)


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """One person's five facts, ten spoken questions: units, tokenizer, records, a tiny model."""
    root = tmp_path_factory.mktemp("sqa")
    assert cli.main(["data", "sqa", str(root / "sqa"), "--people", "1", "--dev-fraction", "0",
                     "--test-fraction", "0"]) == 0
    manifest = root / "sqa" / "train.jsonl"
    dialogs = [json.loads(line) for line in manifest.read_text().splitlines()]
    waves = [load_audio(root / "sqa" / d[side]["audio"])[0] for d in dialogs for side in ("prompt", "response")]
    extractor = units.UnitExtractor.fit(waves, units.build_features("mfcc"), 25.0,
                                        options=kmeans.KMeansOptions(num_clusters=24, epochs=3, seed=0))
    extractor.save(root / "units")
    lines = root / "text.txt"
    lines.write_text("".join(d["prompt"]["text"] + "\n" for d in dialogs) + (root / "sqa" / "facts.txt").read_text())
    train_sentencepiece([lines], root / "tok", 300, extra_lines=TEMPLATE_TEXTS)
    report = prepare(manifest_items(manifest) + text_items(root / "sqa" / "facts.txt"), root / "prepared",
                     PrepareOptions(str(root / "tok"), str(root / "units")), progress=None)
    layout = PreparedData(root / "prepared").layout
    cfg = load_config("configs/most_tiny.yaml", [
        "model.num_layers=2", "model.scan_layers=false", "data.seq_len=192", "data.batch_size=4",
        "data.mixture.asr=0", "data.mixture.tts=0", "data.mixture.text_lm=0", "data.mixture.spoken_qa_text=0.5",
        "data.mixture.spoken_qa_speech=0.5", f"data.records={root / 'prepared'}", "train.steps=200",
        "train.lr=3e-3", "train.warmup_steps=20", "train.min_lr_ratio=0.01", "train.log_every=50",
        "train.checkpoint_every=1000", "train.async_checkpoint=false"])
    cfg = config_from_dict(to_dict(dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab=layout.config, vocab_size=layout.vocab_size))))
    run_training(cfg, root / "run", iter(build_dataset(cfg.data)), console=io.StringIO())
    return root, report


def test_data_sqa_prepares_into_spoken_qa_records(memorised):
    root, report = memorised
    counts = report["records_by_kind"]
    assert counts == {"spoken_qa_text": 10, "spoken_qa_speech": 10, "text": 5}, counts
    facts = (root / "sqa" / "facts.txt").read_text().splitlines()
    assert len(facts) == 5 and all(f.endswith(".") for f in facts)
    cli_error(["data", "sqa", str(root / "sqa"), "--people", "1"], "exists")


def test_eval_sqa_answers_the_memorised_questions(memorised, capsys, tmp_path):
    root, _ = memorised
    vcfg = tiny_cfg(**{**GAN_TINY, "upsample_rates": [8, 80], "upsample_kernel_sizes": [16, 160]}, num_units=24)
    save_params(tmp_path / "voc", vcfg, nnx.state(Vocoder(vcfg.model, rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict())
    run = ["eval", "sqa", str(root / "run"), "--data", str(root / "sqa" / "train.jsonl"), "--batch-size", "5"]
    capsys.readouterr()
    assert cli.main([*run, "--asr", str(root / "run"), "--vocoder", str(tmp_path / "voc"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["questions"] == 10
    assert out["s2t"]["accuracy"] == 1.0, out["examples"]
    assert out["s2s"]["correct"] == sum(answer_matches(ex["answer"], ex["speech"]) for ex in out["examples"])
    cli_error([*run, "--asr", str(root / "run")], "S->S accuracy needs both --asr .* and --vocoder")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": {"text": "hi"}, "response": {"text": "a"}}\n')
    cli_error([*run[:4], str(bad)], "bad.jsonl line 1: expected a dialog with prompt.audio and a response.text")
