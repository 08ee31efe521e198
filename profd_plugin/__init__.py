"""ProFD (Cui et al., ACM MM 2024) as a torchreid plugin.

``import profd_plugin`` registers the plugin's datasets and the model name ``profd`` with torchreid
and applies the host fixes listed in ``profd_plugin/host.py``.
"""
import warnings

# torchreid warns on every import that its Cython evaluator is missing; the plugin ships its own
# vectorised evaluator (profd_plugin.metrics), so the warning is noise. Filter it before the import.
warnings.filterwarnings("ignore", message="Cython evaluation")

from .config import add_profd_config, get_default_config, setup_cfg  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_profd_config", "get_default_config", "setup_cfg", "__version__"]
