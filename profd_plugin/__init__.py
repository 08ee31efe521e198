"""ProFD (Cui et al., ACM MM 2024) as a torchreid plugin.

``import profd_plugin`` registers the plugin's datasets and the model name ``profd`` with torchreid
(``registry.py``) and applies the host fixes listed in ``host.py``. Public API::

    get_default_config, add_profd_config, setup_cfg        # configuration
    build_profd_model, ProFDEngine                          # model and training loop
    ProFDExtractor, ProFDFeatures                           # features of a trained model (inference.py)
    metrics.visibility_aware_distance, metrics.evaluate_rank
"""
import warnings

# torchreid warns on every import that its Cython evaluator is missing; the plugin ships its own
# vectorised evaluator (profd_plugin.metrics), so the warning is noise. Filter it before the import.
CYTHON_WARNING = "Cython evaluation"
warnings.filterwarnings("ignore", message=CYTHON_WARNING)

import torchreid  # noqa: E402,F401  (the host; imported here so the filter above applies)

from . import metrics  # noqa: E402
from .config import add_profd_config, get_default_config, setup_cfg  # noqa: E402
from .host import apply_host_fixes  # noqa: E402
from .registry import register_all  # noqa: E402

apply_host_fixes()
register_all()

__version__ = "0.1.0"


def __getattr__(name):
    # heavy pieces (open_clip, the engine) are imported on first use
    if name == "build_profd_model":
        from .modeling import build_profd_model

        return build_profd_model
    if name == "ProFDEngine":
        from .engine import ProFDEngine

        return ProFDEngine
    if name in ("ProFDExtractor", "ProFDFeatures"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'profd_plugin' has no attribute '{name}'")


__all__ = [
    "add_profd_config", "get_default_config", "setup_cfg", "build_profd_model", "ProFDEngine",
    "ProFDExtractor", "ProFDFeatures", "metrics", "__version__",
]
