"""`--optimization_level`: documented mapping, user values win, hardware refusals with a reason."""

import pytest

from hftrain.errors import ConfigError
from hftrain.launch import resolve_arguments
from hftrain.presets import preset_plan


def test_documented_mapping():
    assert [f for f, _, _ in preset_plan("light")] == ["bf16", "tf32"]
    assert ("activation_checkpointing", True) in [(f, v) for f, v, _ in preset_plan("standard")]
    assert ("packing", True) in [(f, v) for f, v, _ in preset_plan("standard")]
    aggressive = [(f, v) for f, v, _ in preset_plan("aggressive")]
    assert ("torch_compile", True) in aggressive and ("optim", "adamw_bnb_8bit") in aggressive


def test_cpu_refuses_gpu_only_choices_and_applies_the_rest():
    from hftrain import SFTConfig

    args = resolve_arguments(
        SFTConfig(output_dir="unused", optimization_level="aggressive", report_to="none", use_cpu=True)
    )
    report = "\n".join(args.hftrain_preset_report)
    assert "bf16 mixed precision: refused (use_cpu is set)" in report
    assert "TF32 matmuls: refused (no CUDA GPU)" in report
    assert "torch.compile: refused" in report and "8-bit AdamW (bitsandbytes): refused" in report
    assert args.bf16 is False and args.tf32 in (None, False) and args.torch_compile is False
    assert args.packing is True and args.packing_strategy == "bfd"  # TRL makes bfd packing padding-free
    assert args.activation_checkpointing is True and args.optim == "adamw_torch_fused"


def test_values_the_user_set_win():
    from hftrain import SFTConfig

    args = resolve_arguments(
        SFTConfig(
            output_dir="unused",
            optimization_level="standard",
            report_to="none",
            use_cpu=True,
            gradient_checkpointing=False,
            optim="adamw_torch",
        )
    )
    assert not args.activation_checkpointing and args.optim == "adamw_torch"
    assert any("kept your optim='adamw_torch'" in line for line in args.hftrain_preset_report)
    assert any("activation checkpointing: kept your" in line for line in args.hftrain_preset_report)


def test_unknown_level_is_refused():
    from hftrain import SFTConfig

    with pytest.raises(ConfigError, match="optimization_level: expected one of light, standard, aggressive"):
        SFTConfig(output_dir="unused", optimization_level="turbo", use_cpu=True)


def test_a_field_named_in_the_config_wins_even_at_its_default_value(tmp_path):
    from hftrain import HFTrainParser, SFTConfig

    def parse(argv):
        parser = HFTrainParser((SFTConfig,))
        (parsed,) = parser.parse_args_and_config(argv)
        return resolve_arguments(parsed, parser.explicit_fields)

    config = tmp_path / "cfg.yaml"
    config.write_text(f"output_dir: {tmp_path}\noptimization_level: standard\npacking: false\nuse_cpu: true\n")
    args = parse(["--config", str(config), "--no_gradient_checkpointing"])
    assert args.packing is False  # TRL's default is False too: only the parser knows the user wrote it
    assert any("kept your packing=False" in line for line in args.hftrain_preset_report)
    assert not args.activation_checkpointing
    assert any("activation checkpointing: kept your" in line for line in args.hftrain_preset_report)
    unset = parse(["--output_dir", str(tmp_path), "--optimization_level", "standard", "--use_cpu", "true"])
    assert unset.packing is True
