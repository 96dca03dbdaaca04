"""`most data ...`: corpus synthesis, tokenizer and unit training, record preparation, inspection."""

from most_jax.commands.group import register_group

# Each name X is the module most_jax/commands/data_X.py.
MEMBERS: tuple[str, ...] = ("synth", "train_units", "train_tokenizer", "prepare", "inspect", "audio_lm_pairs", "sqa")


def register(subparsers) -> None:
    register_group(subparsers, "data", "speech and text data tools", MEMBERS)
