#!/usr/bin/env python
"""Train and evaluate ProFD and torchreid built-in models on the same data; write one comparison table.

Usage::

    python tools/benchmark.py --config-file configs/profd_synthetic.yaml \
        --models profd resnet18 osnet_x0_25 --output log/benchmark [--seeds N] [--target NAME] \
        [key value ...] [<model>:key value ...] [baselines:key value ...]

Every model gets the config file and the common ``key value`` options (data, split, augmentation, epochs,
seed, test protocol are therefore the same); ``<model>:key value`` applies to one model and
``baselines:key value`` to every model but ProFD (e.g. ``baselines:train.optim adam``). Baselines default
to ``loss.name triplet`` and ``model.pretrained False``. Each run has its own folder under ``--output``;
running the same command again reuses finished runs and resumes interrupted ones. ProFD also gets the
rows ``profd[global]`` and ``profd[parts]``: its checkpoint evaluated with the global-only and the
parts-only distance. Writes ``<output>/benchmark.md``, ``benchmark.csv`` and ``benchmark.json``
(docs/RESULTS.md, "Benchmark tool").
"""
import argparse
import logging
import signal
import sys
from typing import List, Optional

import profd_plugin  # noqa: F401  (registers the plugin's datasets and the model 'profd' with torchreid)
from profd_plugin.errors import EXIT_CONFIG_ERROR, ProFDError

# errors whose message is the whole story (bad path or value, missing data or weights): one line, exit != 0
USER_ERRORS = (ProFDError, FileNotFoundError, ValueError, KeyError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--config-file", required=True, help="the shared YAML config (see configs/)")
    parser.add_argument("--models", nargs="+", required=True, help="profd and/or torchreid built-in names")
    parser.add_argument("--output", required=True, help="benchmark folder: run folders and the tables")
    parser.add_argument("--seeds", type=int, default=1, help="runs per model: train.seed, train.seed + 1, …")
    parser.add_argument("--target", default="", help="dataset of the table (default: last of data.targets)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' pairs, optionally '<model>:key'")
    args = parser.parse_args(argv)
    # `--models a b key value ...`: model names have no '.' or ':', so options start at the first that has
    first = next((i for i, m in enumerate(args.models) if "." in m or ":" in m), len(args.models))
    args.models, args.opts = args.models[:first], args.models[first:] + args.opts
    return args


def _fail(e: BaseException, code: int) -> int:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    print(f"error: {' '.join(msg.split())}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported in one line
        return int(e.code or 0)
    root = logging.getLogger()
    level = root.level
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    console = root.handlers[-1]
    from profd_plugin.benchmark import run_benchmark  # after logging: its imports log
    from profd_plugin.interrupt import exit_code, graceful_shutdown

    try:
        # SIGTERM / SIGINT: the run in progress writes its -interrupted checkpoint, resumed next time
        with graceful_shutdown(distributed=False):
            run_benchmark(args.config_file, args.models, args.opts, output=args.output, seeds=args.seeds,
                          target=args.target, argv=["python", "tools/benchmark.py", *argv])
    except KeyboardInterrupt as e:
        print(f"interrupted; run the same command again to resume (finished runs in {args.output} are kept)",
              file=sys.stderr)
        return exit_code(getattr(e, "signum", signal.SIGINT))  # 143 for SIGTERM, 130 for Ctrl-C
    except USER_ERRORS as e:
        return _fail(e, getattr(e, "exit_code", 1))
    finally:  # called in-process (tests): leave no handler on a console that may be gone afterwards
        root.removeHandler(console)
        root.setLevel(level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
