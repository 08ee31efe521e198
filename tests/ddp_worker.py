"""Run by ``tests/test_engine.py`` under ``torch.distributed.run``: trains through ``run_from_cfg`` on 2
ranks, then checks that the memory banks and weights agree across ranks and only rank 0 wrote results."""
import argparse

import torch
import torch.distributed as dist

import profd_plugin  # noqa: F401
from profd_plugin.config import setup_cfg
from profd_plugin.training import report_results, setup_engine


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-file")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cfg = setup_cfg(args.config_file, args.opts)
    engine, kwargs = setup_engine(cfg)
    results = engine.run(**kwargs)
    report_results(results, kwargs["save_dir"], 0.0)
    rank = dist.get_rank()
    model = engine.core_model
    names = ("memory.bank_global.prototypes", "memory.bank_parts.prototypes", "backbone.visual.conv1.weight")
    for name in names:
        t = model.state_dict()[name].contiguous()
        gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, t)
        assert all(torch.equal(gathered[0], g) for g in gathered[1:]), name
    if rank == 0:
        print("banks in sync")
    else:
        assert results == {}, "rank 1 evaluated"
        print("rank 1 wrote nothing")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
