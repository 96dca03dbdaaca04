"""`most` imports only the module of the command it runs, and its help still lists every command."""

import subprocess
import sys

import pytest

from most_jax.cli import COMMAND_MODULES, main

COMMANDS = [m.replace("_", "-") for m in COMMAND_MODULES]


def _loaded_commands(*argv: str) -> set[str]:
    """Command modules imported by `most ARGV` in a fresh interpreter."""
    code = ("import sys\nfrom most_jax.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('most_jax.commands.')))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    return set(done.stdout.split("\n")[-2].split())


def test_a_command_imports_only_its_own_module():
    assert _loaded_commands("import-hf", "--help") == {"import_hf"}
    assert set(COMMAND_MODULES) <= _loaded_commands("--help")


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")
              and not line.startswith("     ")]
    assert listed == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_is_named_after_its_module_and_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: most {command} ")


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["imprt-hf"])
    err = capsys.readouterr().err
    assert "invalid choice: 'imprt-hf'" in err and "import-hf" in err
