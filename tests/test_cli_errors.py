"""Bad input to the user-facing commands ends in one line naming the culprit, a non-zero exit
status and no traceback (in-process, through most_jax.cli.main)."""

from __future__ import annotations

import pytest

from most_jax.cli import main

BAD_YAML = "model:\n  hidden_size: 64\n  moe: [unclosed\n"


def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit status, the error text) as a shell would see them."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse, or a command's own `raise SystemExit(message)`
        code = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            return code, e.code
    return code, capsys.readouterr().err


def check_one_line(code: int, err: str, command: str, *culprits: str) -> None:
    assert code != 0
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
