"""`most train`: train the configured model family (MoST: on prepared records from `most data prepare`),
with checkpoints and resume."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from most_jax.commands.group import add_config_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (MoST: on prepared data)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes RUN_DIR/metrics.jsonl (one JSON object per logged step), RUN_DIR/eval.jsonl (held-out "
               "losses on data.eval_records every train.eval_every steps, when set), RUN_DIR/tensorboard/ and "
               "RUN_DIR/checkpoints/<step>/. SIGTERM or Ctrl-C saves a checkpoint and exits; run again with "
               "--resume to continue exactly where it stopped.")
    add_train_args(parser)
    parser.set_defaults(handler=run)


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """The arguments of `most train`, shared by the family commands that are thin aliases of it."""
    add_config_args(parser)
    parser.add_argument("--run-dir", default=None,
                        help="output directory (default: runs/<config file name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in RUN_DIR (starts fresh if there is none)")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="start from the parameters of a checkpoint (e.g. written by `most import-hf`); "
                             "the optimizer starts fresh")
    parser.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                        help="device mesh, e.g. data=2,expert=4 (axes slice, data, fsdp, expert, tensor; -1: the rest); "
                             "same as --set mesh.AXIS=N. Default: every device on the data axis")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="save and stop after this step (the schedule still spans train.steps); "
                             "for runs split over several jobs")


def run(args: argparse.Namespace, family_name: str | None = None) -> int:
    """`most train`; with `family_name`, a config of another family is an error."""
    import jax

    from most_jax import parallel, sharding
    from most_jax.config import ConfigError, load_config
    from most_jax.models.family import get_family
    from most_jax.train.loop import run_training

    sharding.initialize_distributed()
    mesh_overrides = sharding.parse_mesh_arg(args.mesh) if args.mesh else []
    cfg = load_config(args.config, [*args.overrides, *mesh_overrides])
    family = get_family(cfg.model)
    if family_name is not None and family.name != family_name:
        raise ConfigError(f"model.family: {family.name!r}; this command trains a {family_name} model")
    if family.batches is None:
        raise ConfigError(f"model.family: family {family.name} has no training data pipeline")
    mesh = sharding.make_mesh(cfg.mesh)
    parallel.check_config(cfg, mesh)
    batches = family.batches(cfg)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / (Path(args.config).stem if args.config
                                                                      else "default")
    print(f"[train] mesh {sharding.describe(mesh)} over {jax.device_count()} devices in {jax.process_count()} "
          f"process(es)", file=sys.stderr, flush=True)
    result = run_training(cfg, run_dir, batches, resume=args.resume, init_from=args.init_from,
                          stop_after=args.stop_after, mesh=mesh, param_shardings=parallel.param_sharding_fn(cfg.model))
    if result.last_record is not None and result.last_record.get("loss") is not None:
        print(f"step {result.step}: loss {result.last_record['loss']:.4f}")
    return 0
