"""Several nodes: scripts/launch.slurm builds one `accelerate launch` per node from the Slurm environment (fake
`srun`/`scontrol` here), and accelerate's own parser and environment preparation read those commands as one job:
machine ranks 0..N-1, one process per GPU, global ranks covering the world once, rank 0 on the first node, and the
recipe's global batch the same over all nodes. Also: the tracker warns when its database is on a network
filesystem."""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_SCONTROL = """#!/usr/bin/env python3
import sys
assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
nodes = int(__import__("os").environ["SLURM_NNODES"])
print("\\n".join(f"gpu{i + 1:02d}" for i in range(nodes)))
"""
# One task per node, one after another, each with the variables Slurm sets for it.
FAKE_SRUN = """#!/usr/bin/env python3
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith("-"):
    args.pop(0)
for node in range(int(os.environ["SLURM_NNODES"])):
    env = dict(os.environ, SLURM_NODEID=str(node), SLURM_PROCID=str(node), SLURMD_NODENAME=f"gpu{node + 1:02d}")
    subprocess.run(args, env=env, check=True)
"""


def _slurm_dry_run(tmp_path, nodes: int, gpus: int, *arguments: str) -> tuple[str, list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HFTRAIN_TRACKER_DB"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NODELIST=f"gpu[01-{nodes:02d}]",
        SLURM_JOB_ID="4242",
        SLURM_GPUS_ON_NODE=str(gpus),
        SLURM_SUBMIT_DIR=REPO,
        HFTRAIN_SLURM_DRY_RUN="1",
        PYTHON=sys.executable,
        TMPDIR=str(tmp_path),
    )
    result = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "launch.slurm"), *arguments],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    commands = []
    for line in result.stdout.splitlines():
        if line.startswith("node "):
            node, _, command = line.partition(": ")
            assert int(node.split()[1]) == len(commands)
            commands.append(shlex.split(command))
    return result.stdout, commands


def _accelerate_view(command: list[str], monkeypatch):
    """What accelerate makes of one node's command: its parsed arguments after the config file is applied, and
    the torchrun arguments it prepares (processes per node, nodes, node rank, rendezvous)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as launch_utils

    start = command.index("accelerate.commands.launch") + 1
    args = launch_command_parser().parse_args(command[start:])
    args, _, _ = _validate_launch_command(args)
    monkeypatch.setattr(launch_utils, "is_port_in_use", lambda port: False)  # the fake first node is not here
    launch_utils.prepare_multi_gpu_env(args)
    return args


def test_launch_slurm_builds_one_launch_per_node_with_consistent_ranks(tmp_path, monkeypatch):
    nodes, gpus = 2, 8
    stdout, commands = _slurm_dry_run(
        tmp_path,
        nodes,
        gpus,
        "sft",
        "recipes/configs/sft_qwen2.5-0.5b_full.yaml",
        "--global_batch_size",
        "256",
        "--output_dir",
        str(tmp_path / "out"),
    )
    assert len(commands) == nodes
    assert "2 node(s) x 8 GPU(s) = 16 processes; rendezvous gpu01:29742" in stdout  # 29500 + 4242 % 1000
    assert f"tracker {tmp_path}/hftrain-4242/runs.db" in stdout  # a node-local default, copied after the job
    ranks = []
    for node, command in enumerate(commands):
        assert command[0] == sys.executable
        args = _accelerate_view(command, monkeypatch)
        assert args.config_file.endswith("accelerate_configs/multi_node.yaml") and args.multi_gpu
        assert (args.num_machines, args.num_processes, int(args.machine_rank)) == (nodes, nodes * gpus, node)
        assert (args.nnodes, args.nproc_per_node, args.node_rank) == (str(nodes), str(gpus), node)
        assert (args.master_addr, args.master_port) == ("gpu01", "29742")  # static rendezvous: rank 0 on gpu01
        assert args.training_script == "recipes/sft.py"
        ranks += [args.node_rank * gpus + local for local in range(gpus)]  # torchrun's global ranks on this node
        recipe_args = args.training_script_args
    assert sorted(ranks) == list(range(nodes * gpus)) and ranks[0] == 0

    # The recipe on any of those processes: the global batch holds over all 16, with the accumulation derived.
    sys.path.insert(0, os.path.join(REPO, "recipes"))
    try:
        import sft
    finally:
        sys.path.pop(0)
    import hftrain.launch

    monkeypatch.setenv("WORLD_SIZE", str(nodes * gpus))
    monkeypatch.setattr(hftrain.launch, "accelerator_visible", lambda: True)  # the nodes have GPUs; this one not
    monkeypatch.chdir(REPO)
    _, training_args, _ = sft.parse_args(recipe_args)
    from hftrain.launch import global_batch

    assert training_args.per_device_train_batch_size == 8 and training_args.gradient_accumulation_steps == 2
    assert global_batch(training_args) == 256


def test_launch_slurm_takes_an_accelerate_config_and_refuses_bad_arguments(tmp_path, monkeypatch):
    _, commands = _slurm_dry_run(tmp_path, 3, 4, "dpo", "recipes/configs/dpo_qwen2.5-0.5b_full.yaml", "fsdp")
    assert len(commands) == 3
    args = _accelerate_view(commands[2], monkeypatch)
    assert args.config_file.endswith("accelerate_configs/fsdp.yaml") and args.use_fsdp
    assert (args.num_processes, args.nproc_per_node, args.node_rank) == (12, "4", 2)
    missing = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "launch.slurm"), "nope", "x.yaml"],
        env={**os.environ, "SLURM_SUBMIT_DIR": REPO},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "recipes/nope.py not found" in missing.stderr
    no_gpus = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "launch.slurm"), "sft", "recipes/configs/sft_default.yaml"],
        env={**os.environ, "SLURM_SUBMIT_DIR": REPO, "SLURM_NNODES": "2", "GPUS_PER_NODE": "0"},
        capture_output=True,
        text=True,
    )
    assert no_gpus.returncode == 2 and "no GPUs found" in no_gpus.stderr


def test_multi_node_config_loads_with_static_rendezvous():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(os.path.join(REPO, "accelerate_configs", "multi_node.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU and config.num_machines > 1
    assert config.same_network and config.rdzv_backend == "static" and not config.use_cpu
    assert config.num_processes % config.num_machines == 0


@pytest.mark.parametrize(
    "fstype, warned", [("nfs4", True), ("lustre", True), ("fuse.sshfs", True), ("ext4", False), ("tmpfs", False)]
)
def test_network_filesystem_detection(tmp_path, fstype, warned):
    from hftrain.tracking.settings import network_filesystem

    shared = tmp_path / "shared"
    shared.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {shared} {fstype} rw 0 0\n")
    assert network_filesystem(str(shared / "sub" / "runs.db"), str(mounts)) == (fstype if warned else None)
    assert network_filesystem(str(tmp_path / "local.db"), str(mounts)) is None
    assert network_filesystem(str(tmp_path / "x.db"), str(tmp_path / "no-such-table")) is None


def test_the_tracker_warns_on_rank_0_when_its_database_is_on_a_network_filesystem(tmp_path, monkeypatch):
    from transformers.utils import logging

    import hftrain
    from hftrain.builtin import build_tiny_causal_lm, build_tokenizer
    from hftrain.tracking import settings

    monkeypatch.setattr(settings, "network_filesystem", lambda path: "nfs4")
    messages = []
    monkeypatch.setattr(logging.get_logger(settings.__name__), "warning", messages.append)
    args = hftrain.TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none")
    hftrain.Trainer(build_tiny_causal_lm(build_tokenizer(), hidden_size=32), args)
    assert len(messages) == 1 and "network filesystem (nfs4)" in messages[0] and "local disk" in messages[0]
