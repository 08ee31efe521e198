"""Configuration: a mirror of torchreid's host keys plus the plugin's ``cfg.profd`` node.

``get_default_config()`` reproduces the subset of deep-person-reid's ``scripts/default_config.py``
(KaiyangZhou/deep-person-reid @ f8cd150, the code the PyPI wheel ``torchreid==0.2.5`` ships) that
``tools/main.py`` and the plugin read, with the same key names. Code defaults follow the official
ProFD recipe (``Cuixxx/ProFD`` @ 14e47d3, see ``docs/DESIGN.md``), so YAML files stay short deltas.

``setup_cfg(config_file, opts)`` is the one fixed sequence: defaults -> ``add_profd_config`` -> YAML
file -> command-line ``opts`` -> ``validation.validate_config`` -> ``freeze``. Unknown keys raise
:class:`ConfigKeyError` with the closest valid names, every other problem a one-line
:class:`~profd_plugin.errors.ConfigError`. Nothing here imports torch.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from yacs.config import CfgNode as CN

from .errors import ConfigError

__all__ = ["get_default_config", "add_profd_config", "setup_cfg", "ConfigKeyError", "all_keys"]

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class ConfigKeyError(ConfigError, KeyError):
    """An unknown or malformed config key (from a YAML file or the command line)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a clean one-liner
        return ConfigError.__str__(self)


def _host_config() -> CN:
    """The torchreid keys the plugin reads (names as in deep-person-reid ``default_config.py``)."""
    cfg = CN()

    cfg.model = CN()
    cfg.model.name = "profd"  # torchreid model name (any built-in, e.g. osnet_x0_25, or 'profd')
    cfg.model.pretrained = False  # ImageNet weights for torchreid built-ins (needs network)
    cfg.model.load_weights = ""  # path to a checkpoint whose weights are loaded before training/testing
    cfg.model.resume = ""  # path to a checkpoint to resume training from ('auto' = latest in save_dir)

    cfg.data = CN()
    cfg.data.root = "reid-data"  # folder that holds the dataset folders
    cfg.data.sources = ["synthetic_occluded"]  # training datasets
    cfg.data.targets = ["synthetic_occluded"]  # test datasets (one table row each)
    cfg.data.workers = 2  # data-loader worker processes
    # decode every train image + mask once and keep them in memory (RAM ~ decoded train set; same batches)
    cfg.data.cache_train = False
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    # train augmentations: random_flip | random_crop (pad + crop) | random_erase | color_jitter
    cfg.data.transforms = ["random_flip", "random_crop", "random_erase"]
    cfg.data.k_tfm = 1
    cfg.data.norm_mean = [0.5, 0.5, 0.5]  # official ProFD normalisation (not CLIP's mean/std)
    cfg.data.norm_std = [0.5, 0.5, 0.5]
    cfg.data.save_dir = "log"  # logs, checkpoints, tensorboard events and results.json go here
    cfg.data.load_train_targets = False

    cfg.sampler = CN()
    cfg.sampler.train_sampler = "RandomIdentitySampler"
    cfg.sampler.num_instances = 4  # K images per identity in a batch
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1

    cfg.train = CN()
    cfg.train.optim = "adamw"  # adamw | adam | amsgrad | sgd | rmsprop | radam
    cfg.train.lr = 5e-5
    cfg.train.weight_decay = 1e-4
    cfg.train.max_epoch = 60
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 64
    cfg.train.fixbase_epoch = 0
    cfg.train.open_layers = ["classifier"]
    cfg.train.staged_lr = False  # torchreid built-ins only; ProFD declares its own parameter groups
    cfg.train.new_layers = ["classifier"]
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = "warmup_multi_step"  # warmup_multi_step | single_step | multi_step | cosine
    cfg.train.stepsize = [30, 50]
    cfg.train.gamma = 0.1
    cfg.train.print_freq = 20
    cfg.train.seed = 1234

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.0
    cfg.sgd.nesterov = False
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = "triplet"  # torchreid built-ins: softmax | triplet (ProFD uses its own criterion)
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 1.0

    cfg.test = CN()
    cfg.test.batch_size = 64
    cfg.test.dist_metric = "euclidean"  # torchreid built-ins: euclidean | cosine
    cfg.test.normalize_feature = False
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False  # evaluation only
    cfg.test.eval_freq = -1  # evaluate every N epochs (-1: only at the end)
    cfg.test.start_eval = 0
    cfg.test.rerank = False  # k-reciprocal re-ranking (torchreid's re_ranking)
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    return cfg


def add_profd_config(cfg: CN) -> CN:
    """Add the plugin's keys under ``cfg.profd`` (in place) and return ``cfg``.

    Defaults are the official code's recipe; the paper's variants are switches. Symbols refer to the
    paper's equations (see ``docs/DESIGN.md``).
    """
    cfg.profd = CN()
    p = cfg.profd

    p.clip = CN()
    p.clip.name = "ViT-B-16"  # open_clip CLIP ViT / ResNet (RN50), or tiny, tiny_rn, tiny_rn10 (CPU)
    p.clip.pretrained = "openai"  # 'openai' (download) | path to a local checkpoint | 'none' (random init)
    p.clip.cache_dir = ""  # open_clip download cache ('' = open_clip default)
    p.clip.stride = 16  # ViT: patch stride (12 = ProFD*, 21x10); ResNet: 16 (last stride 1) | 32
    p.clip.quick_gelu = True  # QuickGELU activations (OpenAI weights); False for GELU-trained open_clip ones

    p.prompt = CN()
    p.prompt.n_ctx = 16  # M learnable context tokens per prompt (Eq. 2/4)
    p.prompt.class_specific = True  # one context per part (official CSC=True); False = shared context
    p.prompt.foreground_word = "people"  # extra foreground prompt (official); '' = none
    p.prompt.train_text_encoder = True  # official: trained at the head lr; paper: frozen
    p.prompt.learnable_background = False  # official: fixed random background vector (never updated)

    p.decoder = CN()
    p.decoder.num_layers = 2  # hybrid attention blocks
    p.decoder.num_heads = 8  # heads of the multi-head attentions (SPA is single-head, as official)
    p.decoder.dropout = 0.1  # dropout in attention and FFN
    p.decoder.ffn_ratio = 4  # FFN hidden = ffn_ratio x width (Eq. 11)
    p.decoder.attention = "hybrid"  # hybrid (SEA + SPA) | sea | spa | none (mask-weighted average pooling)

    p.visibility = CN()
    p.visibility.test_mode = "softmax"  # softmax (official "dai": softmax over parts of sigmoid/T) | sigmoid
    p.visibility.temperature = 0.1  # T of the test-time softmax
    p.visibility.threshold = 0.1  # visibility below this is set to 0 at test time

    p.masks = CN()
    p.masks.dir = "pifpaf_maskrcnn_filtering"  # <dataset>/masks/<dir>/... holds the human-parsing masks
    p.masks.grouping = "five_v"  # part grouping of the 36 PifPaf fields (see data/masks.py PART_GROUPS)
    p.masks.required = True  # missing train mask: error (True) or warning + empty mask (False)
    p.masks.bg_threshold = 0.5  # background = 1 where max over parts < threshold
    p.masks.sharpness = 15.0  # masks = softmax over parts+bg of (sharpness x masks)
    p.masks.scale = 4  # masks are kept at (height/scale, width/scale), official 64x32
    p.masks.patch_label_scale = 64.0  # patch labels M_p = softmax_c(scale x AvgPool(masks)) (Eq. 6)

    p.augment = CN()
    p.augment.pad = 10  # random_crop: zero-pad this many pixels, then crop back
    p.augment.crop_prob = 1.0  # random_crop probability (official: always applied; paper: 0.5)
    p.augment.erase_prob = 0.5  # random_erase probability (erased area becomes background)
    p.augment.erase_area = [0.02, 0.333]  # erased area fraction range
    p.augment.erase_ratio = [0.3, 3.33]  # aspect ratio range (log-uniform)
    p.augment.jitter_prob = 0.5  # color_jitter probability
    p.augment.brightness = 0.2  # color_jitter brightness (official Occluded-ReID config)
    p.augment.contrast = 0.15  # color_jitter contrast
    p.augment.saturation = 0.0  # color_jitter saturation
    p.augment.hue = 0.0  # color_jitter hue
    p.augment.flip_prob = 0.5  # random_flip probability

    p.loss = CN()
    p.loss.id_global = 1.0  # L_id(F_g) weight (Eq. 19)
    p.loss.triplet_global = 1.0  # L_tri(F_g)
    p.loss.id_parts = 1.0  # L_id(F_c) on the concatenated parts
    p.loss.triplet_parts = 1.0  # L_tri(F_c)
    p.loss.label_smooth = 0.1  # epsilon of the ID cross-entropy
    p.loss.triplet_margin = 0.3  # batch-hard triplet margin
    p.loss.attention = 1.0  # L_attn (Eq. 9) weight
    p.loss.attention_temperature = 0.01  # targets = softmax over patches of (M_p / T)
    p.loss.alignment = 0.35  # L_align (Eq. 6) weight
    p.loss.alignment_logit_scale = 5.0  # S = scale x cos(patch, prompt) (Eq. 5)
    p.loss.alignment_label_smooth = 0.1  # label smoothing of the alignment cross-entropy
    p.loss.diversity = 1.0  # L_div (Eq. 12) weight
    p.loss.diversity_mode = "softmax"  # softmax (official dynamic balancer) | mean (paper Eq. 12)
    p.loss.visibility = 10.0  # L_vis (Eq. 13) weight
    p.loss.focal_alpha = 0.65  # focal loss alpha (Eq. 13)
    p.loss.focal_gamma = 2.0  # focal loss gamma (Eq. 13)
    p.loss.pcl_global = 1.0  # L_pcl^g (Eq. 16) weight
    p.loss.pcl_parts = 1.0  # L_pcl^p (Eq. 18) weight
    p.loss.pcl_temperature = 0.05  # tau
    p.loss.pcl_momentum = 0.2  # m_g = m_p (Eq. 15/17)
    p.loss.pcl_update = "hard"  # hard (official: hardest sample per id) | mean (batch mean per id)

    p.optim = CN()
    p.optim.backbone_lr_mult = 0.1  # CLIP visual encoder lr = train.lr x this (official staged lr)
    p.optim.no_decay_bias_norm = True  # no weight decay on biases, norms, prompt context (official: all)

    p.train = CN()
    p.train.warmup_epochs = 10  # linear warm-up length of warmup_multi_step
    p.train.warmup_factor = 0.1  # warm-up starts at lr x this
    p.train.amp = "none"  # none | bf16 | fp16 (CUDA only; ignored on CPU)
    p.train.grad_clip = 0.0  # max gradient norm (0 = off)
    p.train.checkpoint_freq = 10  # save a checkpoint every N epochs (and always at the end)
    p.train.memory_init = True  # initialise PCL memory banks with a pass over the training loader

    p.test = CN()
    p.test.distance = "visibility"  # visibility (Eq. 14) | global | parts
    p.test.metric = "euclidean"  # euclidean (official: between unit vectors) | cosine (paper Eq. 14)
    p.test.chunk_size = 512  # gallery chunk for the pairwise distance
    p.test.flip = False  # flip test-time augmentation (average of image and mirrored image features)
    p.test.device = "auto"  # where distances and ranking run: auto | cpu | cuda

    p.synthetic = CN()
    p.synthetic.num_ids = 60  # identities in the train split (test ids are disjoint)
    p.synthetic.num_test_ids = 40  # identities in query/gallery
    p.synthetic.images_per_id = 8  # images per identity (test ids: 1-2 of them are queries)
    p.synthetic.height = 256  # generated image size
    p.synthetic.width = 128  # generated image width
    p.synthetic.seed = 0  # generator seed (same seed + sizes = byte-identical dataset)
    p.synthetic.cache_dir = ""  # '' = generate under data.root
    return cfg


def get_default_config() -> CN:
    """Host keys + ``cfg.profd`` defaults (official ProFD recipe)."""
    return add_profd_config(_host_config())


def all_keys(node: CN, prefix: str = "") -> List[str]:
    """Every leaf key of ``node`` as a dotted name."""
    keys = []
    for k, v in node.items():
        name = f"{prefix}{k}"
        keys.extend(all_keys(v, name + ".") if isinstance(v, CN) else [name])
    return keys


def _check_keys(cfg: CN, names: Iterable[str], source: str) -> None:
    valid = all_keys(cfg)
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
            hint = f"; closest valid keys: {', '.join(close)}" if close else ""
            raise ConfigKeyError(f"unknown config key '{name}' in {source}{hint}")


def _leaves(data: dict, prefix: str = "") -> List[Tuple[str, Any]]:
    out = []
    for k, v in data.items():
        name = f"{prefix}{k}"
        out.extend(_leaves(v, name + ".") if isinstance(v, dict) else [(name, v)])
    return out


def _read_yaml(path: str) -> dict:
    """The YAML file as a dict; syntax errors become one line naming the file, line and column."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "r") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path}{where}: YAML syntax error ({problem})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    return data


def _typed(cfg: CN, key: str, value: Any, source: str) -> Any:
    """``value`` with the type of ``key``'s default (int -> float and tuple <-> list are converted)."""
    default = cfg
    for part in key.split("."):
        default = default[part]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if type(value) is not type(default) and not (isinstance(default, str) and isinstance(value, str)):
        expected = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
                    list: "a list"}.get(type(default), type(default).__name__)
        raise ConfigError(f"{key} = {value!r} in {source}: must be {expected} (default {default!r})")
    return value


def _decode(text: Any) -> Any:
    """A command-line value as yacs reads it (a Python literal, else the string itself)."""
    return CN._decode_cfg_value(text)


def setup_cfg(config_file: Optional[str] = None, opts: Sequence[str] = (), freeze: bool = True,
              validate: bool = True) -> CN:
    """Defaults -> ``add_profd_config`` -> YAML -> command-line ``opts`` -> validate -> freeze.

    Values take the type of their default (``train.lr 1`` is the float 1.0).

    Raises:
        ConfigKeyError: an unknown key (naming it and the closest valid ones).
        ConfigError: a missing or unreadable config file, a YAML syntax error (file, line, column), an
            odd-length ``opts`` list, a value of the wrong type, or (``validate``) any value that
            :func:`profd_plugin.validation.validate_config` rejects.
    """
    cfg = get_default_config()
    if config_file:
        data = _read_yaml(config_file)
        pairs = _leaves(data)
        _check_keys(cfg, [k for k, _ in pairs], config_file)
        for key, value in pairs:
            cfg.merge_from_list([key, _typed(cfg, key, value, config_file)])
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"command-line options must be 'key value' pairs; got {len(opts)} items: {opts}")
    _check_keys(cfg, opts[0::2], "the command line")
    for key, text in zip(opts[0::2], opts[1::2]):
        cfg.merge_from_list([key, _typed(cfg, key, _decode(text), "the command line")])
    if validate:
        from .validation import validate_config

        validate_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg
