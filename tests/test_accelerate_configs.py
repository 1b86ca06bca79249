"""accelerate_configs/*.yaml load with accelerate's own loader (without deepspeed installed) and say what they claim."""

import os
import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "accelerate_configs")


def load(name):
    return load_config_from_file(os.path.join(CONFIGS, name))


def test_every_expected_config_exists():
    assert sorted(os.listdir(CONFIGS)) == sorted(
        [
            "cpu_ddp.yaml",
            "single_gpu.yaml",
            "multi_gpu.yaml",
            "multi_node.yaml",
            "deepspeed_zero2.yaml",
            "deepspeed_zero3.yaml",
            "deepspeed_zero3_offload.yaml",
            "fsdp.yaml",
        ]
    )


def test_cpu_and_gpu_configs():
    cpu = load("cpu_ddp.yaml")
    assert cpu.distributed_type == DistributedType.MULTI_GPU and cpu.use_cpu and cpu.num_processes == 2
    single = load("single_gpu.yaml")
    assert single.distributed_type == DistributedType.NO and single.num_processes == 1 and not single.use_cpu
    multi = load("multi_gpu.yaml")
    assert multi.distributed_type == DistributedType.MULTI_GPU and multi.num_processes > 1 and not multi.use_cpu


@pytest.mark.parametrize(
    "name, stage, offload",
    [
        ("deepspeed_zero2.yaml", 2, "none"),
        ("deepspeed_zero3.yaml", 3, "none"),
        ("deepspeed_zero3_offload.yaml", 3, "cpu"),
    ],
)
def test_deepspeed_configs(name, stage, offload):
    config = load(name)
    assert config.distributed_type == DistributedType.DEEPSPEED and config.mixed_precision == "bf16"
    ds = config.deepspeed_config
    assert ds["zero_stage"] == stage
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == offload
    if stage == 3:
        assert ds["zero3_init_flag"] and ds["zero3_save_16bit_model"]  # a normal model lands in output_dir
    assert "deepspeed" not in sys.modules  # loading the file never needed the package


def test_fsdp2_full_state_dict():
    config = load("fsdp.yaml")
    assert config.distributed_type == DistributedType.FSDP
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
