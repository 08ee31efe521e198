"""``tools/main.py`` (or ``tools/benchmark.py``) with the backbone-search CLIP configs of
``benchmarks/clip_configs/`` registered.

The configs (open_clip format, random init only) are the candidate CLIP ResNets that were compared with
``tiny_rn`` when the embedded default was chosen (``benchmarks/embedded_default.sh``, docs/RESULTS.md);
they are not part of the plugin. Usage::

    python benchmarks/main_with_clip_configs.py <tools/main.py args>
    python benchmarks/main_with_clip_configs.py --benchmark <tools/benchmark.py args>   # e.g. --seeds 3
"""
import importlib.util
import os
import sys

import open_clip

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(os.path.dirname(HERE), "tools")


def main(argv):
    tool = "main.py"
    if argv[:1] == ["--benchmark"]:  # runs train in this process, so the registered configs are seen
        tool, argv = "benchmark.py", argv[1:]
    open_clip.add_model_config(os.path.join(HERE, "clip_configs"))
    spec = importlib.util.spec_from_file_location("profd_tool", os.path.join(TOOLS, tool))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
