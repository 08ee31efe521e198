#!/usr/bin/env python
"""Train and/or evaluate ProFD or a torchreid built-in model from a yacs config.

Usage::

    python tools/main.py --config-file configs/profd_synthetic.yaml [key value ...]
    python tools/main.py --config-file configs/profd_occ_duke.yaml --eval-only model.load_weights ckpt.pth.tar
    torchrun --nproc_per_node 2 tools/main.py --config-file configs/profd_occ_duke.yaml

Every run writes into its own folder ``<data.save_dir>/<model.name>-<train|eval>-<time>/`` (config, log,
tensorboard events, checkpoints, ``results.json``); prints a table of R1 / R5 / R10 / mAP per target.
"""
import argparse
import contextlib
import logging
import os.path as osp
import sys
import time
import traceback

import torch
import torch.distributed as dist

import profd_plugin  # noqa: F401  (registers the plugin's datasets and the model 'profd' with torchreid)
from profd_plugin.config import setup_cfg
from profd_plugin.distributed import is_main_process
from profd_plugin.errors import EXIT_CONFIG_ERROR, ProFDError
from profd_plugin.training import Tee, init_distributed, prepare_run, run_from_cfg

# errors whose message is the whole story (bad path or value, missing data or weights): one line, exit != 0
USER_ERRORS = (ProFDError, FileNotFoundError, ValueError, KeyError)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="path to a YAML config (see configs/)")
    parser.add_argument("--eval-only", action="store_true", help="shortcut for test.evaluate True")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' pairs overriding the config")
    args = parser.parse_args(argv)
    if "--eval-only" in args.opts:  # REMAINDER swallows flags written after the first option
        args.opts.remove("--eval-only")
        args.eval_only = True
    return args


def setup(args: argparse.Namespace):
    """Defaults -> add_profd_config -> YAML -> command line -> freeze."""
    opts = list(args.opts) + (["test.evaluate", "True"] if args.eval_only else [])
    return setup_cfg(args.config_file or None, opts)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = setup(args)
    except (ProFDError, FileNotFoundError) as e:
        return _fail(e, EXIT_CONFIG_ERROR)
    init_distributed(torch.cuda.is_available())  # before anything asks which rank this is
    try:
        plan = prepare_run(cfg)
    except ProFDError as e:
        return _fail(e, e.exit_code)
    log_name = "test.log" if plan.kind == "eval" else "train.log"
    log_path = osp.join(plan.run_dir, f"{log_name}-{time.strftime('%Y-%m-%d-%H-%M-%S')}")
    try:
        with Tee(log_path) if is_main_process() else contextlib.nullcontext() as tee:
            _configure_logging()
            try:
                print(f"Config:\n{cfg}\n")
                print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
                print(f"run folder: {plan.run_dir}")
                run_from_cfg(cfg, plan=plan)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return 130
            except USER_ERRORS as e:  # one line on the console; the traceback in the log (stderr off rank 0)
                (tee.file if tee is not None else sys.stderr).write(traceback.format_exc())
                code = e.exit_code if isinstance(e, ProFDError) else 1
                return _fail(e, code, log_path if tee is not None else None)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _fail(e: BaseException, code: int, log_path: str = None) -> int:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    where = f" (traceback in {log_path})" if log_path else ""
    print(f"error: {' '.join(msg.split())}{where}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
