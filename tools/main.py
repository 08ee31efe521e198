#!/usr/bin/env python
"""Train and/or evaluate ProFD or a torchreid built-in model from a yacs config.

Usage::

    python tools/main.py --config-file configs/profd_synthetic.yaml [key value ...]
    python tools/main.py --config-file configs/profd_occ_duke.yaml --eval-only model.load_weights ckpt.pth.tar
    torchrun --nproc_per_node 2 tools/main.py --config-file configs/profd_occ_duke.yaml

Every run writes into its own folder ``<data.save_dir>/<model.name>-<train|eval>-<time>/`` (config, log,
tensorboard events, checkpoints, ``results.json``); prints a table of R1 / R5 / R10 / mAP per target.
The config is read and checked before torch is imported: a bad key or value costs a fraction of a second.
Exit codes: 0 done, 1 a runtime user error (one ``error:`` line), 2 a config error, 130 / 143 stopped by
SIGINT / SIGTERM (an ``-interrupted`` checkpoint was written).
"""
import argparse
import contextlib
import logging
import os
import os.path as osp
import signal
import sys
import time
import traceback

from profd_plugin.config import setup_cfg  # light: yacs only; torch is imported after the config is good
from profd_plugin.errors import ProFDError
from profd_plugin.validation import validate_save_dir


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
    """Defaults -> add_profd_config -> YAML -> command line -> validate -> freeze."""
    opts = list(args.opts) + (["test.evaluate", "True"] if args.eval_only else [])
    cfg = setup_cfg(args.config_file or None, opts)
    validate_save_dir(cfg.data.save_dir)
    return cfg


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (the log tee during a run, the console after)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # logging assigns it in __init__; the property always resolves anew
        pass


def _configure_logging(main_process: bool) -> None:
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, handlers=[_CurrentStdout()],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)


def _output(main_process: bool, log_path: str):
    """Rank 0: console + log file. Other ranks: nothing on stdout (warnings and errors still on stderr)."""
    from profd_plugin.training import Tee

    if main_process:
        return Tee(log_path)
    return contextlib.redirect_stdout(open(os.devnull, "w"))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = setup(args)
    except ProFDError as e:
        return _fail(e, e.exit_code)
    import torch
    import torch.distributed as dist

    from profd_plugin.distributed import is_distributed, is_main_process
    from profd_plugin.interrupt import exit_code, graceful_shutdown
    from profd_plugin.training import init_distributed, prepare_run, run_from_cfg

    try:
        init_distributed(torch.cuda.is_available())  # before anything asks which rank this is
        plan = prepare_run(cfg)
        log_path = osp.join(plan.run_dir, f"{'test' if plan.kind == 'eval' else 'train'}.log-"
                                          f"{time.strftime('%Y-%m-%d-%H-%M-%S')}")
        with _output(is_main_process(), log_path) as out, graceful_shutdown(is_distributed()):
            _configure_logging(is_main_process())
            try:
                print(f"Config:\n{cfg}\n")
                print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
                print(f"run folder: {plan.run_dir}")
                run_from_cfg(cfg, plan=plan)
            except KeyboardInterrupt as e:  # the engine saved an -interrupted checkpoint, said how to resume
                return exit_code(getattr(e, "signum", signal.SIGINT))
            except ProFDError as e:  # one line on the console; the traceback in the log
                if is_main_process():
                    out.file.write(traceback.format_exc())
                return _fail(e, e.exit_code, log_path if is_main_process() else None)
    except ProFDError as e:  # before the log exists (distributed setup, run folder)
        return _fail(e, e.exit_code)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _fail(e: BaseException, code: int, log_path: str = None) -> int:
    where = f" (traceback in {log_path})" if log_path else ""
    print(f"error: {e}{where}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
