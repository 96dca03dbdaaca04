"""`most scaling fit`: the power-law fits recover known constants within their intervals."""

import json
import math

import numpy as np
import pytest
import scipy.optimize

from cli_check import cli_error
from most_jax.cli import main
from most_jax.scaling.fit import (COMPUTE_NAMES, analyse, fit_compute, compute_to_reach, fit_with_bootstrap, frontier_loss,
                                  optimal_params)
from most_jax.scaling.results import ResultsError, Run, read_results
from scaling_synth import CHINCHILLA, loss_nd, params_data_runs


def _runs(records):
    return [Run(r["run"], r["variant"], r["params_active"], r["tokens"], r["flops"], r["loss"],
                {m: r[f"loss_{m}"] for m in ("text", "audio") if f"loss_{m}" in r}) for r in records]


def _within(constants, truth):
    return {k: (c["low"], truth[k], c["high"]) for k, c in constants.items() if k in truth
            and not c["low"] <= truth[k] <= c["high"]}


def test_params_data_fit_recovers_chinchilla_constants_within_intervals():
    runs = _runs(params_data_runs(np.random.default_rng(0)))
    out = analyse(runs, bootstrap=100, seed=1)
    fit = out["params_data"]
    assert _within(fit, CHINCHILLA) == {}
    for k, truth in CHINCHILLA.items():  # informative intervals, not the whole line
        assert fit[k]["high"] - fit[k]["low"] < truth, k
    assert abs(fit["alpha"]["value"] - 0.34) < 0.03 and abs(fit["E"]["value"] - 1.69) < 0.05


def test_compute_fit_recovers_its_constants_and_shrugs_off_an_outlier():
    rng = np.random.default_rng(3)
    truth = {"E": 2.0, "A": 40.0, "alpha": 0.12}
    c = np.geomspace(1e12, 1e20, 16)
    loss = (truth["E"] + truth["A"] * c ** -truth["alpha"]) * np.exp(rng.normal(0, 0.004, c.size))
    fit = fit_with_bootstrap([c], loss, COMPUTE_NAMES, bootstrap=80, rng=rng)
    assert _within(fit.constants(), truth) == {}
    loss[5] *= 1.4  # one diverged run
    robust = fit_with_bootstrap([c], loss, COMPUTE_NAMES, bootstrap=0, rng=rng).law.as_dict()
    assert abs(robust["alpha"] - truth["alpha"]) < 0.01 and abs(robust["E"] - truth["E"]) < 0.05


def test_optimal_params_minimises_the_law_at_fixed_compute():
    law = analyse(_runs(params_data_runs(np.random.default_rng(0), noise=0.0)), bootstrap=0)["_fits"]["all runs"]
    law = law["params_data"].law
    for compute in (1e18, 1e21, 1e24):
        k = 6.0
        best = scipy.optimize.minimize_scalar(lambda logn: float(law(math.exp(logn), compute / (k * math.exp(logn)))),
                                              bounds=(math.log(1e3), math.log(1e13)), method="bounded",
                                              options={"xatol": 1e-9})
        assert math.log(optimal_params(law, compute, k)) == pytest.approx(best.x, abs=1e-3)
        assert float(frontier_loss(law, compute, k)) == pytest.approx(best.fun, rel=1e-9)


def test_a_law_without_a_minimum_has_no_frontier_rather_than_a_complex_one():
    """Runs whose tokens are a fixed multiple of their parameters can fit a negative coefficient: the
    constrained minimum does not exist, and the frontier is undefined (NaN), not complex."""
    from most_jax.scaling.fit import PARAMS_DATA_NAMES, Law
    law = Law(PARAMS_DATA_NAMES, (1.7, 400.0, 0.34, -50.0, 0.28))
    assert np.isnan(optimal_params(law, np.array([1e18, 1e20]), 6.0)).all()
    assert math.isnan(float(frontier_loss(law, 1e18, 6.0)))


def test_moe_multiplier_is_the_compute_saving_at_every_size():
    rng = np.random.default_rng(5)
    runs = _runs(params_data_runs(rng) + params_data_runs(rng, variant="moe", compute_saving=2.0))
    out = analyse(runs, bootstrap=40, seed=2)
    points = out["multiplier"]["moe"]
    assert [p["params_active"] for p in points] == pytest.approx(sorted({r.params_active for r in runs}))
    for p in points:
        assert p["low"] <= 2.0 <= p["high"] and abs(p["value"] - 2.0) < 0.25, p
    assert out["variants"]["dense"]["frontier"]["params_exponent"]["value"] == pytest.approx(0.28 / 0.62, abs=0.06)


def test_modalities_get_their_own_exponents():
    rng = np.random.default_rng(7)
    records = params_data_runs(rng)
    c = np.array([r["flops"] for r in records])
    for r, ci in zip(records, c):
        r["loss_text"] = float((1.5 + 30 * ci ** -0.10) * np.exp(rng.normal(0, 0.003)))
        r["loss_audio"] = float((2.0 + 3000 * ci ** -0.20) * np.exp(rng.normal(0, 0.003)))
    runs, rng = _runs(records), np.random.default_rng(3)
    text, audio = (fit_compute(runs, lambda r, m=m: r.modality_loss[m], bootstrap=100, rng=rng, delta=1e-3).constants()
                   for m in ("text", "audio"))
    assert text["alpha"]["low"] <= 0.10 <= text["alpha"]["high"]
    assert audio["alpha"]["low"] <= 0.20 <= audio["alpha"]["high"]
    assert text["alpha"]["high"] < audio["alpha"]["low"]


def test_compute_to_reach_inverts_the_law():
    law = analyse(_runs(params_data_runs(np.random.default_rng(0))), bootstrap=0)["_fits"]["all runs"]["compute"].law
    assert compute_to_reach(law, float(law(3e17))) == pytest.approx(3e17, rel=1e-9)
    assert compute_to_reach(law, law.E * 0.99) is None


def test_too_few_runs_is_a_clear_error(tmp_path):
    records = params_data_runs(np.random.default_rng(0))[:3]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cli_error(["scaling", "fit", str(tmp_path), "--no-plots"], "L\\(C\\): 3 runs, need at least 4")


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not JSON"),
    ("[1, 2]", "line 2: expected a JSON object, got list"),
    ('{"run": "b", "variant": "dense", "params_active": 1e6, "tokens": 1e7, "flops": 6e13}', "line 2: field 'loss' missing"),
    ('{"run": "b", "variant": "dense", "params_active": -1, "tokens": 1e7, "flops": 6e13, "loss": 3}',
     "line 2: field 'params_active' must be a positive finite number, got -1"),
    ('{"run": "a", "variant": "dense", "params_active": 1e6, "tokens": 1e7, "flops": 6e13, "loss": 3}',
     "line 2: run 'a' already on line 1"),
    ('{"run": "b", "variant": "", "params_active": 1e6, "tokens": 1e7, "flops": 6e13, "loss": 3}',
     "line 2: field 'variant' must be a non-empty string"),
    ('{"run": "b", "variant": "dense", "params_active": 1e6, "tokens": 1e7, "flops": 6e13, "loss": 3, "loss_audio": "x"}',
     "line 2: field 'loss_audio' must be a positive finite number"),
])
def test_malformed_results_name_the_line(tmp_path, line, message):
    good = '{"run": "a", "variant": "dense", "params_active": 1e6, "tokens": 1e7, "flops": 6e13, "loss": 3}'
    (tmp_path / "results.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(ResultsError, match=message.replace("(", "\\(").replace(")", "\\)")) as err:
        read_results(tmp_path)
    assert str(tmp_path / "results.jsonl") in str(err.value)


def test_missing_results_table(tmp_path, capsys):
    cli_error(["scaling", "fit", str(tmp_path / "nowhere")], "no results table")


def test_cli_json_table_and_plots(tmp_path, capsys):
    rng = np.random.default_rng(11)
    records = params_data_runs(rng) + params_data_runs(rng, variant="moe", compute_saving=1.5)
    for r in records:
        r["loss_text"], r["loss_audio"], r["extra"] = r["loss"] * 0.9, r["loss"] * 1.2, [1, 2]
    records[3]["loss_audio"] = None  # not measured for that run
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["scaling", "fit", str(tmp_path), "--json", "--bootstrap", "8", "--plots", str(tmp_path / "p")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["params_data"]) >= {"E", "A", "alpha", "B", "beta"}
    assert set(out["compute"]) >= {"E", "A", "alpha"} and set(out["compute"]["alpha"]) == {"value", "low", "high"}
    assert out["modalities"]["audio"]["runs"] == len(records) - 1
    assert out["variants"]["moe"]["runs"] == 20 and len(out["multiplier"]["moe"]) == 5
    assert sorted(p.rsplit("/", 1)[1] for p in out["plots"]) == [
        "loss_by_modality.png", "loss_vs_compute.png", "multiplier_vs_size.png"]
    for p in out["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["scaling", "fit", str(tmp_path / "results.jsonl"), "--bootstrap", "4", "--no-plots",
                 "--baseline", "moe"]) == 0
    table = capsys.readouterr().out
    assert "compute multiplier of dense over moe" in table and "L(N,D)" in table
    assert not list(tmp_path.glob("*.png"))
