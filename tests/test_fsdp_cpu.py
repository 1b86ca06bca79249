"""FSDP on CPU: torch's FSDP2 (`fully_shard`) trains over gloo, but accelerate does not route an FSDP launch to it
on CPU, so the recipes cannot run `accelerate_configs/fsdp.yaml` without a GPU (README, Recipes -> Scaling up).

These tests pin both halves of that reason, so the day accelerate allows it the second one fails and says so."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

TORCH_FSDP2 = textwrap.dedent(
    """
    import torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    shard = model[0].weight
    local, full = tuple(shard.to_local().shape), tuple(shard.shape)
    print(f"rank {dist.get_rank()}: {type(shard).__name__} local {local} of {full}")
    dist.destroy_process_group()
    """
)

ACCELERATE_STATE = textwrap.dedent(
    """
    from accelerate import Accelerator
    accelerator = Accelerator(cpu=True)  # what transformers builds under use_cpu (hftrain sets it without a GPU)
    print("distributed_type", accelerator.distributed_type.value)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torch_fsdp2_shards_and_trains_on_cpu_over_gloo(tmp_path):
    script = tmp_path / "fsdp2.py"
    script.write_text(TORCH_FSDP2)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    result = subprocess.run(
        [*command, str(_free_port()), str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 0: DTensor local (8, 8) of (16, 8)" in result.stdout  # each rank holds half of the weight
    assert "rank 1: DTensor local (8, 8) of (16, 8)" in result.stdout


def test_accelerate_turns_an_fsdp_launch_on_cpu_into_ddp(tmp_path):
    """An `accelerate launch` with fsdp.yaml's settings sets these variables; on CPU accelerate's state becomes
    MULTI_CPU (DDP over gloo) and ignores FSDP, which it only enables on GPU-family process groups."""
    script = tmp_path / "state.py"
    script.write_text(ACCELERATE_STATE)
    env = {
        **os.environ,
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
        "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
        "ACCELERATE_USE_CPU": "true",
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "distributed_type MULTI_CPU" in result.stdout, (
        "accelerate now keeps FSDP on CPU: add the two-process FSDP recipe run over gloo to CI and update the "
        "README's Scaling up section"
    )
