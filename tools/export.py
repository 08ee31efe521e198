#!/usr/bin/env python
"""Export a trained ProFD checkpoint to ONNX or TorchScript, with a JSON sidecar and a parity check.

Usage::

    python tools/export.py --checkpoint log/profd_synthetic/profd-train-<time>/model/model.pth.tar-30 \\
        --format onnx --output profd.onnx [--batch dynamic|N] [--opset 17]
    python tools/export.py --checkpoint CKPT --format torchscript --output profd.pt

Writes FILE and FILE.json (input size, mean, std, channel order, output names and shapes, the distance to
use, the checkpoint it came from), each atomically, only after the exported file has been run (onnxruntime
CPU, or the reloaded TorchScript module) against PyTorch: the max abs difference per output is printed,
and one above ``--tolerance`` stops the export. The graph's input is a batch of images already resized to
the trained size and normalised (see docs/EXPORT.md). Bad input (missing, corrupt or non-ProFD checkpoint,
unwritable output, unknown format or batch) prints one ``error: ...`` line, exits non-zero and writes
nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional

from profd_plugin.errors import EXIT_CONFIG_ERROR, ProFDError

EXIT_USAGE = EXIT_CONFIG_ERROR  # a bad command line, as a bad config key in tools/main.py


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one ``error: ...`` line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _batch(value: str) -> Optional[int]:
    """``dynamic`` -> None, a positive integer -> itself."""
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch < 1:
        raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or a positive integer, got '{value}'")
    return batch


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from profd_plugin.export import FORMATS, PARITY_TOLERANCE

    p = _OneLineParser(description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by tools/main.py (model.pth.tar-N)")
    p.add_argument("--format", required=True, dest="fmt", help=f"{' | '.join(FORMATS)}")
    p.add_argument("--output", required=True, help="file to write (its sidecar is FILE.json)")
    p.add_argument("--batch", type=_batch, default=None, metavar="dynamic|N",
                   help="'dynamic' (default: any batch size) or a fixed batch size")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's recommended one)")
    p.add_argument("--tolerance", type=float, default=PARITY_TOLERANCE,
                   help=f"largest max abs difference the parity check accepts (default {PARITY_TOLERANCE:g})")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import profd_plugin  # noqa: F401  (torchreid's import warning filtered, host fixes applied)
    from profd_plugin.export_files import check_batches, export_checkpoint

    batch = "dynamic" if args.batch is None else args.batch
    print(f"exporting {args.checkpoint} to {args.output} ({args.fmt}, batch {batch})", flush=True)
    try:
        result = export_checkpoint(args.checkpoint, fmt=args.fmt, output=args.output, batch=args.batch,
                                   opset=args.opset, tolerance=args.tolerance)
    except ProFDError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    runtime = result.metadata["parity"]["runtime"]
    print(f"parity check ({runtime} vs PyTorch), max abs difference per output:")
    for size in check_batches(args.batch):
        diffs = ", ".join(f"{name} {diff:.3g}" for name, diff in result.parity[size].items())
        print(f"  batch {size}: {diffs}")
    print(f"wrote {result.output}")
    print(f"wrote {result.sidecar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
