"""`most data inspect DIR`: decoded examples with modality ids and loss masks, and dataset statistics."""

from __future__ import annotations

import json

import numpy as np

from most_jax.data import records as rec
from most_jax.data.pipeline import TASK_KIND, PreparedData, format_record
from most_jax.data.tasks import TASKS, Example


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show decoded examples and statistics of a prepared directory",
        description="Prints the prepare report, record counts, per-task sequence-length statistics, and a few "
                    "examples of each task the records support, decoded span by span with their modality id "
                    "(0 text, 1 audio) and loss mask (1 = predicted).")
    parser.add_argument("directory", metavar="DIR", help="a directory written by `most data prepare`")
    parser.add_argument("--examples", type=int, default=2, help="examples shown per task (default 2)")
    parser.add_argument("--max-records", type=int, default=2000,
                        help="records per kind read for the length statistics (default 2000)")
    parser.set_defaults(handler=_run)


def render(example: Example, data: PreparedData, max_units: int = 12) -> list[str]:
    """One line per span of tokens sharing kind (text / units / one special), modality and loss mask."""
    layout, specials = data.layout, data.layout.special_names()
    kind = np.where(layout.is_unit(example.tokens), 1, np.where(layout.is_text(example.tokens), 0, 2))
    lines, start = [], 0
    for end in range(1, len(example) + 1):
        if end < len(example) and kind[end] == kind[start] != 2 and example.modality[end] == example.modality[
                start] and example.loss_mask[end] == example.loss_mask[start]:
            continue
        span = example.tokens[start:end]
        if kind[start] == 0:
            shown = repr(data.tokenizer.decode(span))
        elif kind[start] == 1:
            units = layout.tokens_to_units(span)
            more = f" ... (+{len(units) - max_units})" if len(units) > max_units else ""
            shown = f"units[{len(units)}]: " + " ".join(map(str, units[:max_units])) + more
        else:
            shown = specials.get(int(span[0]), f"<id {int(span[0])}>")
        lines.append(f"    modality={int(example.modality[start]):2d} loss={int(example.loss_mask[start])}  {shown}")
        start = end
    return lines


def _run(args) -> int:
    data = PreparedData(args.directory)
    report_path = data.directory / rec.REPORT_FILE
    if report_path.is_file():
        print("prepare report:", json.dumps(json.loads(report_path.read_text()), indent=2))
    print(f"vocabulary: {data.layout.to_dict()}")
    for task in TASKS:
        source = data.source(TASK_KIND[task])
        if source is None:
            continue
        count = min(len(source), args.max_records)
        examples = [format_record(data.formatter, task, rec.decode_record(source[i])) for i in range(count)]
        lengths = np.array([len(e) for e in examples])
        loss = np.array([int(e.loss_mask.sum()) for e in examples])
        audio = np.array([int((e.modality == 1).sum()) for e in examples])
        print(f"\n== {task}: {len(source)} '{TASK_KIND[task]}' records; over {count}: length mean {lengths.mean():.1f} "
              f"min {lengths.min()} max {lengths.max()}, loss tokens mean {loss.mean():.1f}, audio tokens mean "
              f"{audio.mean():.1f}")
        for i, example in enumerate(examples[:args.examples]):
            print(f"  example {i}: {len(example)} tokens, {int(example.loss_mask.sum())} with loss")
            print("\n".join(render(example, data)))
    return 0
