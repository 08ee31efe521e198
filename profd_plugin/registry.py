"""Registration of the plugin inside torchreid: the one place that touches host registries.

torchreid has no public model registry, so the ProFD model names are written into its factory dict
(the one sanctioned touch of host internals). Datasets go through ``register_image_dataset``
(``profd_plugin/data/builtin.py``). Both are idempotent.

Model names, the torchreid way (one name per variant, like ``osnet_x0_25``; torchreid's ``build_model``
passes no configuration): :data:`VARIANTS`. Each takes any input size whose patch grid fits (the trained
positional grid is resampled to the input's grid), and ``pretrained=False`` never needs downloaded weights.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

MODEL_NAME = "profd"
#: torchreid model name -> the config overrides that define it (on ``get_default_config()``)
VARIANTS: Dict[str, Tuple[str, ...]] = {
    # ProFD: CLIP ViT-B/16, patch stride 16, 256x128 (pretrained=True: OpenAI CLIP weights)
    "profd": (),
    # ProFD*: overlapping patch stride 12 (21x10 patches at 256x128)
    "profd_s12": ("profd.clip.stride", "12"),
    # the CPU demo's model (configs/profd_synthetic.yaml): small random-init CLIP ResNet, stride 32, 128x64
    "profd_tiny": ("profd.clip.name", "tiny_rn10", "profd.clip.stride", "32", "profd.clip.pretrained", "none",
                   "data.height", "128", "data.width", "64"),
    # the same with the tiny random-init CLIP ViT (configs/profd_synthetic_vit.yaml)
    "profd_tiny_vit": ("profd.clip.name", "tiny", "profd.clip.pretrained", "none", "data.height", "128",
                       "data.width", "64"),
}


def _variant_factory(name: str) -> Callable[..., Any]:
    overrides = VARIANTS[name]

    def factory(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                **kwargs: Any):
        """torchreid-style factory; imports the model lazily so ``import profd_plugin`` stays light."""
        from .modeling import profd_torchreid_factory

        opts = [*overrides, *kwargs.pop("opts", ())]
        return profd_torchreid_factory(num_classes=num_classes, loss=loss, pretrained=pretrained,
                                       use_gpu=use_gpu, opts=opts, **kwargs)

    factory.__name__ = factory.__qualname__ = f"{name}_factory"
    factory.__doc__ = (f"torchreid factory of '{name}' (config overrides {list(overrides)}); optional "
                       "keyword arguments cfg= and opts= as profd_torchreid_factory.")
    return factory


def variant_config(name: str):
    """The config a variant is built with (``get_default_config()`` + :data:`VARIANTS` overrides)."""
    from .config import get_default_config

    cfg = get_default_config()
    cfg.merge_from_list(list(VARIANTS[name]))
    return cfg


def variant_of(cfg, keys: Tuple[str, ...]) -> Optional[str]:
    """The first variant whose config agrees with ``cfg`` on ``keys`` (a hint for error messages), or None."""
    from .checkpoint import config_value

    for name in VARIANTS:
        ref = variant_config(name)
        if all(config_value(ref, key) == config_value(cfg, key) for key in keys):
            return name
    return None


def register_model() -> None:
    """Make ``torchreid.reid.models.build_model(<variant>, ...)`` build ProFD (idempotent)."""
    from torchreid.reid import models

    factories = getattr(models, "__model_factory")
    for name in VARIANTS:
        factories[name] = _variant_factory(name)


def register_all() -> None:
    """Register the plugin's datasets and models with torchreid (safe to call any number of times)."""
    from .data.builtin import register_datasets

    register_datasets()
    register_model()
