"""Run by ``tests/test_engine.py`` under ``torch.distributed.run``: ``tools/main.py``'s ``main`` with the
same arguments, in this process, on 2 ranks; after training (before ``main`` closes the process group) it
checks that the memory banks and weights agree across ranks and that rank 1 evaluated nothing, and prints
what it found once ``main`` has returned (rank 1's stdout is ``main``'s to silence until then).

Once ``main`` has returned, nothing may hold the engine: its DDP wrapper holds the gloo process group, whose
C++ worker threads then outlive ``destroy_process_group`` and are torn down during interpreter
finalisation, where they can abort the process (``terminate called without an active exception``) after a
run that succeeded. The worker therefore undoes its patches, and reports whether the process is back to its
one thread (every gloo thread joined)."""
import os
import sys

import torch
import torch.distributed as dist
from conftest import load_main

import profd_plugin.training as training

SYNCED = ("memory.bank_global.prototypes", "memory.bank_parts.prototypes", "backbone.visual.conv1.weight")


def main() -> int:
    engines, found = [], []
    real_setup_engine, real_run_from_cfg = training.setup_engine, training.run_from_cfg

    def setup_engine(*args, **kwargs):
        engine, run_kwargs = real_setup_engine(*args, **kwargs)
        engines.append(engine)
        return engine, run_kwargs

    def run_from_cfg(*args, **kwargs):
        results = real_run_from_cfg(*args, **kwargs)
        (engine,) = engines
        state = engine.core_model.state_dict()
        for name in SYNCED:
            t = state[name].contiguous()
            gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, t)
            assert all(torch.equal(gathered[0], g) for g in gathered[1:]), name
        if dist.get_rank() == 0:
            found.append("banks in sync")
        else:
            assert results == {}, "rank 1 evaluated"
            found.append("rank 1 wrote nothing")
        dist.barrier()
        engines.clear()
        return results

    threads_before = _threads()
    training.setup_engine, training.run_from_cfg = setup_engine, run_from_cfg
    try:
        code = load_main().main(sys.argv[1:])
    finally:
        training.setup_engine, training.run_from_cfg = real_setup_engine, real_run_from_cfg
    threads_after = _threads()
    found.append("all threads joined" if threads_after == threads_before else
                 f"{threads_after - threads_before} threads outlive main")
    for line in found:
        print(line)
    return code


def _threads() -> int:
    """The OS threads of this process (Linux)."""
    return len(os.listdir("/proc/self/task"))


if __name__ == "__main__":
    sys.exit(main())
