"""`clo train` under accelerate's own FSDP on CPU processes (gloo), for the FSDP test and for anyone who wants to
try sharded training without GPUs:

    accelerate launch --config_file params/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no \\
        tests/fsdp_cpu_launch.py train RUN.yaml --parallel P.jsonl --out DIR

accelerate turns an FSDP request into plain data parallelism (MULTI_CPU) when the processes have no GPU: its
AcceleratorState only honours FSDP for GPU-like devices (accelerate/state.py), although torch's FSDP2 shards and
trains over gloo on a CPU. This launcher lifts that one gate and nothing else: the state says FSDP with the plugin
accelerate built from the config, then the kit's own train command runs unchanged, so accelerate wraps the model
with its FSDP2 code (fully_shard per decoder layer and at the root), clips, gathers and saves as on GPUs.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_accelerate_init = accelerate.state.AcceleratorState.__init__


def _init_honouring_fsdp_on_cpu(self, *args, **kwargs):
    _accelerate_init(self, *args, **kwargs)
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        # The state is shared and may be built again during training (the Trainer does): keep or rebuild the
        # plugin from the launcher's environment, as accelerate itself does.
        if getattr(self, "fsdp_plugin", None) is None:
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()


accelerate.state.AcceleratorState.__init__ = _init_honouring_fsdp_on_cpu

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kit, wherever pip points
    sys.argv = ["clo", *sys.argv[1:]]
    runpy.run_module("clo_lib", run_name="__main__", alter_sys=True)
