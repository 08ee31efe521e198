"""ProFD (Cui et al., ACM MM 2024) as a torchreid plugin.

``import profd_plugin`` is light (no torch): it installs the filter for torchreid's "Cython evaluation is
unavailable" warning and arranges that torchreid, as soon as it is imported (or right now, if it already
is), gets the plugin's datasets, the model names and the host repairs (``registry.py``, ``host.py``). So
``import profd_plugin; import torchreid`` makes ``torchreid.reid.models.build_model('profd', ...)`` work,
and tools can report a config error before torch is imported. Public API::

    get_default_config, add_profd_config, setup_cfg        # configuration (light)
    ProFDError and subclasses (profd_plugin.errors)        # user errors (light)
    build_profd_model, ProFDEngine, metrics                # model, training loop, matching (import torch)
    ProFDExtractor, ProFDFeatures                          # features of a trained model (inference.py)
"""
import importlib.abc
import importlib.util
import sys
import warnings

#: torchreid warns on every import that its Cython evaluator is missing; the plugin ships its own
#: vectorised evaluator (profd_plugin.metrics), so the warning is noise. The filter precedes the import.
CYTHON_WARNING = "Cython evaluation"
warnings.filterwarnings("ignore", message=CYTHON_WARNING)

from .config import add_profd_config, get_default_config, setup_cfg  # noqa: E402
from .errors import ProFDError  # noqa: E402

__version__ = "0.1.0"
HOST = "torchreid"


def integrate_with_torchreid() -> None:
    """Register the plugin's datasets and models with torchreid and apply the host repairs (idempotent)."""
    from .host import apply_host_fixes
    from .registry import register_all

    apply_host_fixes()
    register_all()


class _AfterTorchreidImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps torchreid's loader so that the plugin integrates right after torchreid's
    package has been executed (its ``__init__`` imports every sub-package the registration needs)."""

    def find_spec(self, name, path=None, target=None):
        if name != HOST:
            return None
        sys.meta_path.remove(self)  # one use; the regular finders locate the real package
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module, _load=load):
                _load(module)
                integrate_with_torchreid()

            spec.loader.exec_module = exec_module
        return spec


if HOST in sys.modules:
    integrate_with_torchreid()
elif not any(isinstance(f, _AfterTorchreidImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTorchreidImport())


def __getattr__(name):
    # the heavy pieces import torch (and through it torchreid): on first use only
    if name == "build_profd_model":
        from .modeling import build_profd_model

        return build_profd_model
    if name == "ProFDEngine":
        from .engine import ProFDEngine

        return ProFDEngine
    if name in ("ProFDExtractor", "ProFDFeatures"):
        from . import inference

        return getattr(inference, name)
    if name in ("metrics", "registry", "host"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'profd_plugin' has no attribute '{name}'")


__all__ = [
    "add_profd_config", "get_default_config", "setup_cfg", "ProFDError", "build_profd_model", "ProFDEngine",
    "ProFDExtractor", "ProFDFeatures", "metrics", "integrate_with_torchreid", "__version__",
]
