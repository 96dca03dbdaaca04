"""`most bench step`: variants of one config timed side by side on its own pipeline's batches."""

import itertools
import json

import pytest
import yaml
from cli_check import cli_error
from data_corpus import make_prepared, make_tokenizer, tiny_model_config

from most_jax.bench import BenchArgumentError
from most_jax.bench.step import StepVariant, parse_variant, run
from most_jax.cli import main
from most_jax.config import load_config
from most_jax.data.pipeline import build_dataset

VARIANTS = [StepVariant("rows64", ("data.seq_len=64", "data.batch_size=4")),
            StepVariant("rows128", ("data.seq_len=128", "data.batch_size=2"))]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_step")
    prepared = make_prepared(root / "prepared", make_tokenizer(root / "tok"))
    cfg = tiny_model_config(prepared)
    cfg["data"] = {"records": str(prepared), "mixture": {"asr": 0.5, "tts": 0.3, "text_lm": 0.2}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_real_tokens_are_those_of_the_pipeline_batches_each_variant_cycles_through(config, tmp_path):
    result = run(config, VARIANTS, warmup=1, repeats=2, batches=2, profile_dir=tmp_path / "trace")
    assert list(result["variants"]) == ["rows64", "rows128"]
    for variant in VARIANTS:
        row = result["variants"][variant.name]
        assert row["tokens_per_step"] == 256 and row["seconds_per_step"] > 0
        # the timed calls are batch 1 then batch 0 of the variant's own pipeline
        data = load_config(config, list(variant.overrides)).data
        batches = list(itertools.islice(iter(build_dataset(data)), 2))
        real = [float((b["segment_ids"] != 0).sum()) for b in batches]
        assert row["real_tokens_per_step"] == pytest.approx(sum(real) / 2, abs=0.05)
        assert 0 < row["real_fraction"] <= 1
        assert row["real_tokens_per_s"] == pytest.approx(row["real_tokens_per_step"] / row["seconds_per_step"],
                                                         rel=1e-2)  # from the rounded seconds
    assert result["variants"]["rows64"]["speed_vs_first"] == 1.0
    assert result["machine"]["cpu_model"]
    # the profile of the first variant: its ops' times, each traced back to the JAX operation
    total, *ops = result["profile"]
    assert total["op"] == "(all ops)" and ops and total["ms_per_step"] >= sum(o["ms_per_step"] for o in ops) - 0.1
    assert all(o["ms_per_step"] > 0 for o in ops)
    assert any("train_step" in o["from"] and o["shape"].startswith("f32[") for o in ops)
    assert list((tmp_path / "trace").glob("**/*.trace.json.gz"))


def test_variant_syntax_and_bad_variants():
    assert parse_variant("a:data.seq_len=64, data.batch_size=4") == StepVariant(
        "a", ("data.seq_len=64", "data.batch_size=4"))
    assert parse_variant("plain") == StepVariant("plain")
    with pytest.raises(BenchArgumentError, match="key=value"):
        parse_variant("a:data.seq_len")
    with pytest.raises(BenchArgumentError, match="must differ"):
        run(None, [StepVariant("a"), StepVariant("a")])


def test_cli_json_and_error_line(config, capsys):
    assert main(["bench", "step", "--config", config, "--variant", "rows64:data.seq_len=64,data.batch_size=4",
                 "--warmup", "1", "--repeats", "1", "--batches", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["variants"]["rows64"]["tokens_per_step"] == 256
    cli_error(["bench", "step", "--config", config, "--variant", ":data.seq_len=64"], r"--variant")
