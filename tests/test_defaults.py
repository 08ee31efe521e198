"""One source of truth for defaults: every config default equals the constructor default it feeds, every
key defined is read by the code, and (yacs) every key the code reads exists."""
import inspect
import os

import pytest
from conftest import tiny_run_opts
from yacs.config import CfgNode

from profd_plugin.config import all_keys, get_default_config, setup_cfg
from profd_plugin.data.datamanager import ProFDDataManager, _params_from_node, dataset_kwargs_from_cfg
from profd_plugin.data.masks import MaskParams
from profd_plugin.data.synthetic import DEFAULT_PARAMS
from profd_plugin.data.transforms import AugmentParams
from profd_plugin.engine import ProFDEngine
from profd_plugin.evaluation import EvaluationMixin
from profd_plugin.losses import ProFDCriterion, build_profd_criterion
from profd_plugin.modeling import ProFD
from profd_plugin.modeling.build import model_kwargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _signature_defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def test_model_defaults_are_the_config_defaults():
    kwargs, defaults = model_kwargs(get_default_config()), _signature_defaults(ProFD.__init__)
    assert set(kwargs) - {"part_names"} <= set(defaults)  # every mapped kwarg has a constructor default
    for name, value in kwargs.items():
        if name != "part_names":
            assert _plain(defaults[name]) == _plain(value), name


def test_criterion_and_parameter_objects_defaults():
    cfg = get_default_config()
    built, plain = build_profd_criterion(cfg), ProFDCriterion()
    for attr in ("weights", "label_smooth", "triplet_margin", "attention_temperature",
                 "alignment_label_smooth", "diversity_mode", "focal_alpha", "focal_gamma"):
        assert getattr(built, attr) == getattr(plain, attr), attr
    assert _params_from_node(MaskParams, cfg.profd.masks, masks_dir="dir") == MaskParams()
    assert _params_from_node(AugmentParams, cfg.profd.augment) == AugmentParams()
    synthetic = dataset_kwargs_from_cfg(cfg)["synthetic_occluded"]
    assert {k: v for k, v in synthetic.items() if k != "cache_dir"} == DEFAULT_PARAMS


def test_engine_data_manager_and_evaluation_defaults():
    cfg = get_default_config()
    engine = _signature_defaults(ProFDEngine.__init__)
    t = cfg.profd.train
    assert (engine["amp"], engine["grad_clip"], engine["memory_init"], engine["checkpoint_freq"]) == (
        t.amp, t.grad_clip, t.memory_init, t.checkpoint_freq)
    ev, mixin = cfg.profd.test, EvaluationMixin
    assert (mixin.eval_distance, mixin.eval_metric, mixin.eval_chunk_size, mixin.eval_flip,
            mixin.eval_device) == (ev.distance, ev.metric, ev.chunk_size, ev.flip, ev.device)
    dm, d = _signature_defaults(ProFDDataManager.__init__), cfg.data
    assert (dm["height"], dm["width"], list(dm["transforms"]), list(dm["norm_mean"]),
            list(dm["norm_std"])) == (d.height, d.width, d.transforms, d.norm_mean, d.norm_std)
    assert (dm["batch_size_train"], dm["batch_size_test"], dm["workers"], dm["cache_train"],
            dm["train_sampler"], dm["num_instances"]) == (
        cfg.train.batch_size, cfg.test.batch_size, d.workers, d.cache_train, cfg.sampler.train_sampler,
        cfg.sampler.num_instances)


# ------------------------------------------------------------------ every key is read
READ = set()


class TrackedCfgNode(CfgNode):
    """A CfgNode that records the dotted name of every leaf value read (attribute or item access)."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        path = self.__dict__.get("_path", "") + str(key)
        if isinstance(value, CfgNode):
            value.__dict__["_path"] = path + "."
        else:
            READ.add(path)
        return value


def _tracked(cfg: CfgNode) -> TrackedCfgNode:
    tracked = TrackedCfgNode(cfg)
    tracked.freeze()
    return tracked


def _exercise(cfg, synthetic_root, tmp_path):
    """The standard paths of tools/main.py for ProFD and for torchreid built-ins (softmax and triplet)."""
    from profd_plugin.training import (
        build_criterion,
        build_datamanager,
        build_engine,
        build_model,
        build_optimizer,
        build_scheduler,
        engine_run_kwargs,
        prepare_run,
        weights_path,
    )

    plan = prepare_run(cfg)
    weights_path(cfg)
    datamanager = build_datamanager(cfg)
    model = build_model(cfg, datamanager.num_train_pids, use_gpu=False)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    engine = build_engine(cfg, datamanager, model, build_criterion(cfg), optimizer, scheduler, use_gpu=False)
    engine_run_kwargs(cfg, plan.run_dir)
    return engine


def test_every_defined_key_is_read(synthetic_root, tmp_path):
    READ.clear()
    profd = setup_cfg(os.path.join(ROOT, "configs", "profd_synthetic.yaml"),
                      tiny_run_opts(synthetic_root, str(tmp_path / "a")))
    _exercise(_tracked(profd), synthetic_root, tmp_path)
    for loss in ("softmax", "triplet"):
        opts = tiny_run_opts(synthetic_root, str(tmp_path / loss), **{
            "model.name": "osnet_x0_25", "loss.name": loss, "train.optim": "sgd",
            "train.lr_scheduler": "cosine"})
        builtin = setup_cfg(os.path.join(ROOT, "configs", "profd_synthetic.yaml"), opts)
        _exercise(_tracked(builtin), synthetic_root, tmp_path)
    unread = sorted(set(all_keys(get_default_config())) - READ)
    assert not unread, f"config keys nothing reads (remove them or use them): {unread}"


def test_reading_a_missing_key_fails_loudly():
    cfg = _tracked(get_default_config())
    with pytest.raises(AttributeError):
        cfg.profd.loss.visibilty  # noqa: B018  (yacs refuses unknown keys: no silent default)
    READ.clear()
    cfg.profd.loss.visibility  # noqa: B018
    assert READ == {"profd.loss.visibility"}  # the tracker records full dotted names
