"""WeNet's side of `most bench u2pp`: the same three models' RTF in the PyTorch transcription.

    PYTHONPATH=$PWD python tests/wenet_ref/bench_rtf.py [the flags of most bench u2pp] [--with-jax] [--json]

Builds each model of `most bench u2pp` (same configs, through WeNet's own YAML and init_asr_model)
as the tests/wenet_ref ASRModel, eager, torch with one thread (WeNet's RTF convention), and times
ASRModel.decode(["ctc_greedy_search"]) on the same input: streaming with simulate_streaming
(forward_chunk_by_chunk with its caches, WeNet's python streaming decode) and full context.
Prints the JSON shape of `most bench u2pp --json` (models, moe_over_dense, ...). With --with-jax the
JAX models (the process pinned to one CPU) are timed in the same interleaved rounds and reported under "jax",
with jax_over_wenet, the RTF ratio per model and mode.

A script, not a `most` command: the package never imports tests/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the wenet_ref package

from most_jax.bench import u2pp as bench  # noqa: E402
from most_jax.checkpoint import wenet  # noqa: E402
from most_jax.commands.bench_u2pp import add_shape_args, pin_to_one_cpu, shape_from_args  # noqa: E402


def wenet_models(shape: bench.U2ppBenchShape) -> dict[str, bench.BenchModel]:
    import torch

    from wenet_ref.asr_model import init_asr_model

    x = torch.from_numpy(bench.feats(shape))[None]
    lengths = torch.tensor([x.shape[1]])
    out = {}
    for name, cfg in shape.configs().items():
        torch.manual_seed(0)
        model = init_asr_model(wenet.wenet_yaml(cfg, None)).eval()
        params = sum(p.numel() for part in (model.encoder, model.ctc) for p in part.parameters())

        def decode(model=model, chunk=-1):
            with torch.inference_mode():
                return model.decode(["ctc_greedy_search"], x, lengths, decoding_chunk_size=chunk,
                                    simulate_streaming=chunk > 0)

        out[name] = bench.BenchModel(params, lambda decode=decode: decode(chunk=shape.chunk), decode)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_args(parser)
    parser.add_argument("--with-jax", action="store_true",
                        help="time the JAX models too, interleaved in the same rounds")
    args = parser.parse_args(argv)
    cpu = pin_to_one_cpu()  # the JAX models too, as `most bench u2pp` runs them
    import torch

    torch.set_num_threads(1)
    shape = shape_from_args(args)
    try:
        groups = {"wenet": wenet_models(shape)}
        if args.with_jax:
            groups["jax"] = bench.jax_models(shape)
        result = bench.measure(groups, shape, args.warmup, args.repeats)
    except ValueError as err:
        raise SystemExit(f"bench_rtf: error: {err}") from None
    for name, model in groups.get("jax", {}).items():
        if model.params != groups["wenet"][name].params:
            raise SystemExit(f"bench_rtf: {name}: {model.params} JAX parameters but {groups['wenet'][name].params} "
                             f"in WeNet's model: not the same shape")
    out = {**result.pop("wenet"), **result, "framework": f"wenet_ref (torch {torch.__version__}, eager, 1 thread)",
           "threads": f"1 (pinned to CPU {cpu})"}
    if "jax" in out:
        out["jax_over_wenet"] = {
            name: {mode: row[f"rtf_{mode}"] / out["models"][name][f"rtf_{mode}"] for mode in bench.MODES}
            for name, row in out["jax"]["models"].items()}
    if args.json:
        print(json.dumps(out))
    else:
        print(bench.format_report({**out, "device": out["framework"]}))
        if "jax" in out:
            print(bench.format_report({**out, **out["jax"], "device": "JAX"}))
            for name, r in out["jax_over_wenet"].items():
                print(f"  RTF JAX / WeNet, {name}: streaming {r['streaming']:.2f}x, full {r['full']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
