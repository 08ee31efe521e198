"""``tools/main.py`` with the backbone-search CLIP configs of ``benchmarks/clip_configs/`` registered.

The configs (open_clip format, random init only) are the candidate CLIP ResNets that were compared with
``tiny_rn`` when the embedded default was chosen (``benchmarks/embedded_default.sh``, docs/RESULTS.md);
they are not part of the plugin. Usage: ``python benchmarks/main_with_clip_configs.py <tools/main.py args>``.
"""
import importlib.util
import os
import sys

import open_clip

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(os.path.dirname(HERE), "tools", "main.py")

if __name__ == "__main__":
    open_clip.add_model_config(os.path.join(HERE, "clip_configs"))
    spec = importlib.util.spec_from_file_location("profd_main", MAIN)
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    sys.exit(main.main(sys.argv[1:]))
