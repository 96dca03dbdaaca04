"""A built wheel, installed outside the source tree, runs `most` from any directory: the configs
and the corpus word lists ship as package data, and shipped configs are found by name."""

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# Left behind when copying the sources: top-level build outputs, runs and tests, and caches anywhere.
_TOP_LEVEL_SKIPPED = {".git", "build", "dist", "runs", "data", "tests", ".pytest_cache"}


def _not_sources(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    return skipped | (_TOP_LEVEL_SKIPPED & set(names) if Path(directory) == REPO else set())


def _run(*argv, cwd, env, timeout=120):
    done = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_wheel_installs_and_runs_from_another_directory(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_not_sources)  # a copy: the build writes build/
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the source tree
    env["JAX_PLATFORMS"] = "cpu"
    _run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(tmp_path / "dist"), cwd=source,
         env=env, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("most_jax-*.whl")
    # The big dependencies come from this interpreter's site-packages; only the wheel is installed.
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=False)
    python, most = tmp_path / "venv" / "bin" / "python", tmp_path / "venv" / "bin" / "most"
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel),
         cwd=tmp_path, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(source)  # nothing may be read from the sources once installed
    located = _run(str(python), "-c", "import most_jax; print(most_jax.__file__)", cwd=elsewhere, env=env)
    assert Path(located.strip()).is_relative_to(tmp_path / "venv")

    assert "demo" in _run(str(most), "--help", cwd=elsewhere, env=env)
    printed = yaml.safe_load(_run(str(most), "config", "--config", "most_tiny.yaml", "--set", "train.steps=3",
                                  cwd=elsewhere, env=env))
    tiny = yaml.safe_load((REPO / "configs" / "most_tiny.yaml").read_text())
    assert printed["model"]["hidden_size"] == tiny["model"]["hidden_size"] and printed["train"]["steps"] == 3
    # `most demo` finds its default config (the shipped demo.yaml) from here
    assert "demo" in yaml.safe_load(_run(str(most), "config", "--demo", cwd=elsewhere, env=env))
    # the corpus generator reads its word lists from the installed package
    _run(str(most), "data", "synth", "corpus", "--num", "2", "--workers", "1", "--dev-fraction", "0",
         "--test-fraction", "0", "--text-lm", "2", cwd=elsewhere, env=env)
    info = json.loads((elsewhere / "corpus" / "corpus.json").read_text())
    assert info["utterances"]["train"] == 2 and info["vocabulary_size"] > 3000
    assert len(list((elsewhere / "corpus" / "audio").glob("*.wav"))) == 2
