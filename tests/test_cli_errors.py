"""Bad input to the user-facing commands ends in one line naming the culprit, a non-zero exit
status and no traceback (in-process, through most_jax.cli.main)."""

from __future__ import annotations

import pytest

from most_jax.cli import main

BAD_YAML = "model:\n  hidden_size: 64\n  moe: [unclosed\n"


def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) as a shell would see them; argparse's own errors exit 2 through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def check_one_line(code: int, err: str, command: str, *culprits: str) -> None:
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"most {command}: error: "), lines[0]
    for culprit in culprits:
        assert culprit in lines[0], (culprit, lines[0])


@pytest.fixture
def bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_YAML)
    return path


@pytest.mark.parametrize("command", [["config"], ["train"], ["compile", "--topology", "v5e-8"]])
def test_malformed_config_file_names_file_and_line(command, bad_yaml, capsys):
    code, err = run_cli([*command, "--config", str(bad_yaml)], capsys)
    check_one_line(code, err, command[0], f"{bad_yaml}:4:", "not valid YAML")


@pytest.mark.parametrize("command", [["config"], ["train"], ["demo"]])
def test_malformed_set_value_names_the_override(command, capsys):
    code, err = run_cli([*command, "--set", "model.moe.top_k=[1, 2"], capsys)
    check_one_line(code, err, command[0], "--set 'model.moe.top_k=[1, 2'", "not valid YAML")


def test_unknown_field_and_missing_file(tmp_path, capsys):
    code, err = run_cli(["config", "--set", "model.no_such_field=1"], capsys)
    check_one_line(code, err, "config", "no_such_field")
    code, err = run_cli(["config", "--config", str(tmp_path / "absent.yaml")], capsys)
    check_one_line(code, err, "config", "absent.yaml")


@pytest.mark.parametrize("argv, culprit", [
    (["logits", "{tmp}/no_ckpt", "--input", "{tmp}/in.npz", "--output", "{tmp}/out.npz"], "no_ckpt"),
    (["import-hf", "{tmp}/no_hf", "{tmp}/out"], "no_hf"),
    (["export-hf", "{tmp}/no_ckpt", "{tmp}/out"], "no_ckpt"),
    (["init-most", "--from", "{tmp}/no_hf", "--out", "{tmp}/out"], "no_hf"),
])
def test_missing_inputs_name_the_path(argv, culprit, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, err = run_cli(argv, capsys)
    check_one_line(code, err, argv[0], culprit)
    assert not (tmp_path / "out").exists()


# One cheap bad input per command: each fails on its arguments or a missing file before any model,
# data or compile work. (command as the handler names it, argv with {tmp} for tmp_path, culprits)
BAD_INPUTS = [
    ("scaling fit", ["scaling", "fit", "{tmp}", "--bootstrap", "-1"], ["--bootstrap"]),
    ("scaling fit", ["scaling", "fit", "{tmp}/no_runs"], ["no_runs", "no results table"]),
    ("flops", ["flops", "--config", "{tmp}/absent.yaml"], ["absent.yaml"]),
    ("data prepare", ["data", "prepare", "--out", "{tmp}/out", "--tokenizer", "{tmp}/tok"], ["--manifest"]),
    ("data prepare", ["data", "prepare", "--family", "u2pp", "--text", "{tmp}/t.txt", "--out", "{tmp}/out",
                      "--tokenizer", "{tmp}/tok"], ["--family u2pp", "--text"]),
    ("data train-units", ["data", "train-units", "--manifest", "{tmp}/m.jsonl", "--out", "{tmp}/out",
                          "--features", "hubert"], ["--hubert"]),
    ("data train-units", ["data", "train-units", "--manifest", "{tmp}/m.jsonl", "--out", "{tmp}/out",
                          "--layer", "3"], ["--layer", "--features hubert"]),
    ("data train-tokenizer", ["data", "train-tokenizer", "--text", "{tmp}/no_text.txt", "--out", "{tmp}/out"],
     ["no_text.txt"]),
    ("data inspect", ["data", "inspect", "{tmp}/no_records"], ["no_records"]),
    ("data synth", ["data", "synth", "{tmp}/out", "--num", "4", "--pitches", "50,50"], ["--pitches"]),
    ("data audio-lm-pairs", ["data", "audio-lm-pairs", "{tmp}/out", "--lexical", "-1"], ["--lexical"]),
    ("data audio-lm-pairs", ["data", "audio-lm-pairs", "{tmp}/out", "--rate-wpm", "150"], ["--rate-wpm"]),
    ("data sqa", ["data", "sqa", "{tmp}/out", "--pitches", "500"], ["--pitches"]),
    ("demo", ["demo", "u2pp", "--full", "--out", "{tmp}/out"], ["--full"]),
    ("bench moe", ["bench", "moe", "--paths", "nowhere"], ["--paths", "nowhere"]),
    ("bench u2pp", ["bench", "u2pp", "--threads", "all", "--dim", "100"], ["--dim 100"]),
    ("bench data", ["bench", "data", "--config", "{tmp}/absent.yaml"], ["absent.yaml"]),
    ("u2pp encode", ["u2pp", "encode", "{tmp}/ck", "--input", "{tmp}/in.npz", "--output", "{tmp}/out.npz",
                     "--chunk", "0"], ["--chunk"]),
    ("u2pp decode", ["u2pp", "decode", "{tmp}/ck", "--input", "{tmp}/in.npz", "--output", "{tmp}/out.npz"],
     ["out.npz", ".json"]),
    ("u2pp transcribe", ["u2pp", "transcribe", "{tmp}/no_ckpt", "{tmp}/a.wav", "--tokenizer", "{tmp}/tok"],
     ["no_ckpt"]),
    ("u2pp export-wenet", ["u2pp", "export-wenet", "{tmp}/no_ckpt", "{tmp}/out"], ["no_ckpt"]),
    ("hubert import-hf", ["hubert", "import-hf", "{tmp}/no_hf", "{tmp}/out"], ["no_hf"]),
    ("hubert features", ["hubert", "features", "{tmp}/no_ckpt", "--input", "{tmp}/in.npz", "--output",
                         "{tmp}/out.npz"], ["no_ckpt"]),
    ("hubert prepare", ["hubert", "prepare", "--manifest", "{tmp}/no_manifest.jsonl", "--units", "{tmp}/u",
                        "--out", "{tmp}/out"], ["u/units.json"]),
    ("generate tts", ["generate", "tts", "{tmp}/no_ckpt", "hello", "--out", "{tmp}/out.wav"], ["--out", ".npy"]),
    ("generate tts", ["generate", "tts", "{tmp}/no_ckpt", "hello", "--out", "{tmp}/out.npy", "--top-p", "0"],
     ["--top-p"]),
    ("generate asr", ["generate", "asr", "{tmp}/no_ckpt", "{tmp}/a.wav", "--batch-size", "0"], ["--batch-size"]),
    ("eval asr", ["eval", "asr", "{tmp}/no_ckpt", "--data", "{tmp}/m.jsonl"], ["no_ckpt"]),
    ("eval audio-lm", ["eval", "audio-lm", "{tmp}/no_ckpt", "--pairs", "{tmp}/p.jsonl", "--batch-size", "0"],
     ["--batch-size"]),
    ("vocoder synth", ["vocoder", "synth", "{tmp}/no_ckpt", "--units", "{tmp}/u.npy", "--out", "{tmp}/o.wav"],
     ["no_ckpt"]),
    ("vocoder import-hf", ["vocoder", "import-hf", "{tmp}/no_hf", "{tmp}/out"], ["no_hf"]),
]


@pytest.mark.parametrize("command, argv, culprits", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_every_command_reports_bad_input_in_one_line(command, argv, culprits, tmp_path, capsys):
    """Through the one handler of most_jax.cli: exit status 2, one line prefixed by the (sub-)command,
    naming the argument or file; nothing is written."""
    code, err = run_cli([a.format(tmp=tmp_path) for a in argv], capsys)
    check_one_line(code, err, command, *culprits)
    assert not (tmp_path / "out").exists()
