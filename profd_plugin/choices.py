"""Every enumerated config choice, in one light module (no torch import).

The modules that implement a choice import its tuple from here, and :mod:`profd_plugin.validation`
checks configs against the same tuples before any heavy import, so a typo is reported in a fraction of a
second. The torchreid names are those of the pinned ``torchreid==0.2.5`` (a test compares them with its
registries).
"""
from __future__ import annotations

from typing import Tuple

#: ``profd.test.distance``: Eq. 14 (global + visibility-weighted parts), global only, parts only
DIST_MODES: Tuple[str, ...] = ("visibility", "global", "parts")
#: ``profd.test.metric``: official Euclidean between unit vectors, or the paper's cosine
DIST_METRICS: Tuple[str, ...] = ("euclidean", "cosine")
#: ``test.dist_metric`` (torchreid built-ins, ``compute_distance_matrix``)
HOST_DIST_METRICS: Tuple[str, ...] = ("euclidean", "cosine")
#: ``profd.decoder.attention``; ``none`` = no decoder, weighted average pooling (paper Table 3)
ATTENTION_MODES: Tuple[str, ...] = ("hybrid", "sea", "spa", "none")
#: ``profd.visibility.test_mode``
VISIBILITY_MODES: Tuple[str, ...] = ("softmax", "sigmoid")
#: ``profd.train.amp``
AMP_MODES: Tuple[str, ...] = ("none", "bf16", "fp16")
#: ``profd.loss.diversity_mode``
DIVERSITY_MODES: Tuple[str, ...] = ("softmax", "mean")
#: ``profd.loss.pcl_update``
MEMORY_UPDATE_MODES: Tuple[str, ...] = ("hard", "mean")
#: ``data.transforms`` names
TRAIN_TRANSFORMS: Tuple[str, ...] = ("random_flip", "random_crop", "random_erase", "color_jitter")
#: ``train.optim``: ProFD trains with AdamW; torchreid built-ins with any of torchreid's or AdamW
PROFD_OPTIMIZERS: Tuple[str, ...] = ("adamw",)
HOST_OPTIMIZERS: Tuple[str, ...] = ("adam", "amsgrad", "sgd", "rmsprop", "radam")
#: ``train.lr_scheduler``: the official warm-up multi-step, or torchreid's
SCHEDULERS: Tuple[str, ...] = ("warmup_multi_step", "single_step", "multi_step", "cosine")
#: ``loss.name`` of torchreid built-ins (their engine: softmax or triplet)
HOST_LOSSES: Tuple[str, ...] = ("softmax", "triplet")
#: ``sampler.train_sampler`` (torchreid ``AVAI_SAMPLERS``)
SAMPLERS: Tuple[str, ...] = ("RandomIdentitySampler", "SequentialSampler", "RandomSampler",
                             "RandomDomainSampler", "RandomDatasetSampler")
#: the model name that builds ProFD in ``tools/main.py``
PROFD_MODEL = "profd"
#: image datasets registered by the plugin (``data.datasets.DATASETS``)
PLUGIN_DATASETS: Tuple[str, ...] = ("market1501", "dukemtmcreid", "occluded_duke", "occluded_reid",
                                    "p_dukemtmc_reid", "synthetic_occluded")
#: torchreid 0.2.5's image datasets (``torchreid.reid.data.datasets.__image_datasets``)
TORCHREID_DATASETS: Tuple[str, ...] = (
    "cuhk01", "cuhk02", "cuhk03", "cuhksysu", "dukemtmcreid", "grid", "ilids", "market1501", "msmt17", "prid",
    "sensereid", "university1652", "viper",
)
#: torchreid 0.2.5's models (``torchreid.reid.models.__model_factory``)
TORCHREID_MODELS: Tuple[str, ...] = (
    "densenet121", "densenet121_fc512", "densenet161", "densenet169", "densenet201", "hacnn",
    "inceptionresnetv2", "inceptionv4", "mlfn", "mobilenetv2_x1_0", "mobilenetv2_x1_4", "mudeep",
    "nasnsetmobile", "osnet_ain_x0_25", "osnet_ain_x0_5", "osnet_ain_x0_75", "osnet_ain_x1_0",
    "osnet_ibn_x1_0",
    "osnet_x0_25", "osnet_x0_5", "osnet_x0_75", "osnet_x1_0", "pcb_p4", "pcb_p6", "resnet101", "resnet152",
    "resnet18", "resnet34", "resnet50", "resnet50_fc512", "resnet50_ibn_a", "resnet50_ibn_b", "resnet50mid",
    "resnext101_32x8d", "resnext50_32x4d", "se_resnet101", "se_resnet50", "se_resnet50_fc512",
    "se_resnext101_32x4d", "se_resnext50_32x4d", "shufflenet", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_0_fc512", "squeezenet1_1",
    "xception",
)
