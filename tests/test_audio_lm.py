"""Audio-LM scoring: batched log-likelihoods against each sequence scored alone, known
answers from a uniform model, ZeroSpeech pair credit (ties 0.5), the pair-file readers and the
built-in pair sets, and `most eval audio-lm` on a saved checkpoint."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from cli_check import cli_error
from data_corpus import NUM_UNITS, make_prepared, make_tokenizer, tiny_most
from flax import nnx

from most_jax import cli
from most_jax.checkpoint.params_io import save_params
from most_jax.corpus import pairs as builtin
from most_jax.corpus.sentences import vocabulary
from most_jax.data.pipeline import PreparedData
from most_jax.eval.audio_lm import SpokenPair, log_likelihoods, pair_accuracy, pair_credit, score_pairs
from most_jax.eval.pair_sets import PairSetError, read_pair_set


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_lm")
    prepared = make_prepared(root / "prepared", make_tokenizer(root / "tok"), num_pairs=2, num_text=1, num_dialogs=1)
    cfg, model = tiny_most(prepared)
    return root, cfg, PreparedData(prepared), model


def _slow_log_likelihood(model, tokens):
    """Sum over the units and EOA of log p(token | every token before it): the sequence alone
    (unpadded), log-softmax in float64 numpy."""
    logits = np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, jnp.asarray(tokens[None]))[0], np.float64)
    return sum(logits[t - 1, tokens[t]] - np.logaddexp.reduce(logits[t - 1]) for t in range(2, len(tokens) - 1))


def test_batched_log_likelihood_equals_each_sequence_scored_alone(setup):
    _, _, data, model = setup
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, NUM_UNITS, n) for n in (3, 7, 5)]
    fast = log_likelihoods(model, data.formatter, seqs, batch_size=2, bucket=8)  # two batches, one padded
    for seq, (total, count) in zip(seqs, fast):
        assert count == len(seq) + 1
        assert total == pytest.approx(_slow_log_likelihood(model, data.formatter.unit_lm(seq).tokens), abs=2e-4)


def test_a_uniform_model_prefers_the_shorter_item_summed_and_ties_normalised(setup):
    _, _, data, model = setup
    uniform = nnx.clone(model)
    uniform.lm_head[...] = jnp.zeros_like(uniform.lm_head[...])  # every next token has probability 1 / V
    pairs = [SpokenPair("a", "short_real", np.array([1, 2]), np.array([1, 2, 3, 4])),
             SpokenPair("b", "long_real", np.array([5, 6, 7, 8, 9]), np.array([5, 6])),
             SpokenPair("c", "same_length", np.array([1, 2, 3]), np.array([3, 2, 1]))]
    result = score_pairs(uniform, data.formatter, pairs, batch_size=4)
    assert result["sum"]["by_category"] == {"long_real": {"accuracy": 0.0, "pairs": 1},
                                            "same_length": {"accuracy": 0.5, "pairs": 1},
                                            "short_real": {"accuracy": 1.0, "pairs": 1}}
    assert result["sum"]["accuracy"] == pytest.approx(0.5)
    assert result["mean"]["accuracy"] == pytest.approx(0.5) and result["mean"]["pairs"] == 3
    v = data.layout.vocab_size
    assert result["examples"][0]["real_sum"] == pytest.approx(-3 * np.log(v), rel=1e-5)


def test_pair_credit_and_accuracy_by_category():
    assert [pair_credit(-1.0, -2.0), pair_credit(-2.0, -2.0), pair_credit(-3.0, -2.0)] == [1.0, 0.5, 0.0]
    pairs = [SpokenPair(str(i), c, np.zeros(1), np.zeros(1)) for i, c in enumerate("xxyy")]
    result = pair_accuracy(pairs, [1.0, 0.0, 2.0, 2.0], [0.0, 1.0, 2.0, 1.0])
    assert result == {"accuracy": 0.625, "pairs": 4, "by_category": {"x": {"accuracy": 0.5, "pairs": 2},
                                                                      "y": {"accuracy": 0.75, "pairs": 2}}}


def test_readers_of_jsonl_and_zerospeech_sets(tmp_path):
    lengths = {}

    def units_of(wave):  # a stand-in extractor: one unit per 100 samples
        lengths[len(wave)] = True
        return np.arange(len(wave) // 100) % 7

    for name, n in (("w1", 300), ("n1", 500), ("w2", 200), ("n2", 400)):
        sf.write(tmp_path / f"{name}.wav", np.zeros(n, np.float32), 16000, subtype="PCM_16")
    (tmp_path / "gold.csv").write_text("id,filename,voice,type,correct\n1,w1,v,anaphor,1\n1,n1,v,anaphor,0\n"
                                       "2,n2,v,island,0\n2,w2,v,island,1\n")
    pairs = read_pair_set(tmp_path, units_of)
    assert [(p.id, p.category, len(p.real), len(p.fake)) for p in pairs] == [("1/v", "anaphor", 3, 5),
                                                                              ("2/v", "island", 2, 4)]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"id": "p", "category": "c", "real": {"units": [1, 2]}, "fake": {"audio": "n1.wav"}})
                     + "\n")
    (pair,) = read_pair_set(jsonl, units_of)
    assert pair.real.tolist() == [1, 2] and len(pair.fake) == 5
    (tmp_path / "gold.csv").write_text("id,filename,correct\n1,w1,1\n")
    with pytest.raises(PairSetError, match="gold.csv:2: pair id '1' has no fake item"):
        read_pair_set(tmp_path, units_of)
    jsonl.write_text('{"id": "p", "category": "c", "real": {"units": []}, "fake": {"units": [1]}}\n')
    with pytest.raises(PairSetError, match="pairs.jsonl:1: real.units"):
        read_pair_set(jsonl, units_of)


def test_builtin_pairs_are_minimal_changes():
    vocab = vocabulary()
    lexical = builtin.lexical_pairs(40, seed=1)
    assert len({p.real for p in lexical}) == 40 and {p.category for p in lexical} == {"vowel", "consonant"}
    for p in lexical:
        assert p.real in vocab and p.fake not in vocab and len(p.real) == len(p.fake)
        assert sum(a != b for a, b in zip(p.real, p.fake)) == 1
    syntactic = builtin.syntactic_pairs(40, seed=1)
    assert {p.category for p in syntactic} == set(builtin.SYNTACTIC)
    for p in syntactic:
        real, fake = p.real.split(), p.fake.split()
        assert len(real) == len(fake) and real != fake
        changed = sum(a != b for a, b in zip(real, fake))
        assert changed == (2 if p.category == "word_order" else 1), p
    assert builtin.syntactic_pairs(40, seed=1) == syntactic  # a seed fixes the set


def test_eval_audio_lm_command(setup, capsys):
    root, cfg, data, model = setup
    save_params(root / "ckpt", cfg, nnx.state(model, nnx.Param).to_pure_dict())
    rng = np.random.default_rng(1)
    lines = [{"id": f"p{i}", "category": c, "real": {"units": rng.integers(0, NUM_UNITS, 4).tolist()},
              "fake": {"units": rng.integers(0, NUM_UNITS, 6).tolist()}} for i, c in enumerate("aab")]
    pairs_file = root / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(["eval", "audio-lm", str(root / "ckpt"), "--pairs", str(pairs_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sum"]["pairs"] == 3 and set(out["mean"]["by_category"]) == {"a", "b"}
    ll = log_likelihoods(model, data.formatter, [np.array(line["real"]["units"]) for line in lines])
    assert [e["real_sum"] for e in out["examples"]] == pytest.approx(ll[:, 0].tolist(), abs=1e-4)
    lines[0]["fake"]["units"] = [NUM_UNITS]
    pairs_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cli_error(["eval", "audio-lm", str(root / "ckpt"), "--pairs", str(pairs_file)], "pair 'p0' fake has unit 50")


def test_data_audio_lm_pairs_speaks_the_builtin_sets(tmp_path):
    """`most data audio-lm-pairs` writes the seed's pairs, each item spoken (audio that is not silence),
    with the units of the given extractor; the pair reader gives back the same units from the audio."""
    from most_jax.speech import kmeans, units

    rng = np.random.default_rng(0)
    ext = units.UnitExtractor.fit([rng.normal(size=16000).astype(np.float32)], units.build_features("mfcc"), 25.0,
                                  options=kmeans.KMeansOptions(num_clusters=8, epochs=1))
    ext.save(tmp_path / "units")
    out = tmp_path / "pairs"
    assert cli.main(["data", "audio-lm-pairs", str(out), "--lexical", "2", "--syntactic", "3", "--seed", "4",
                     "--units", str(tmp_path / "units")]) == 0
    stored = {p.id: p for p in read_pair_set(out / "lexical.jsonl", lambda w: None)}
    for name, expected in (("lexical", builtin.lexical_pairs(2, 4)), ("syntactic", builtin.syntactic_pairs(3, 4))):
        lines = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert [(e["id"], e["category"], e["real"]["text"], e["fake"]["text"]) for e in lines] == \
            [(p.id, p.category, p.real, p.fake) for p in expected]
        for entry in lines:
            for side in ("real", "fake"):
                wave, rate = sf.read(out / entry[side]["audio"], dtype="float32")
                assert rate == 16000 and np.abs(wave).max() > 0.05
                assert entry[side]["units"] == ext.extract(wave).tolist()
    assert set(stored) == {p.id for p in builtin.lexical_pairs(2, 4)}
    cli_error(["data", "audio-lm-pairs", str(out), "--lexical", "1"], "exists")
