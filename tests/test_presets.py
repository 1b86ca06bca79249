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

    with pytest.raises(ConfigError, match="optimization_level: expected one of light, standard, aggressive, extreme"):
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


def test_extreme_and_aggressive_mapping():
    aggressive = [(f, v) for f, v, _ in preset_plan("aggressive")]
    assert ("use_liger_kernel", True) in aggressive
    assert ("activation_offloading", True) not in aggressive
    extreme = [(f, v) for f, v, _ in preset_plan("extreme")]
    for wanted in (
        ("optim", "adamw_bnb_8bit"),
        ("activation_offloading", True),
        ("activation_checkpointing", True),
        ("use_liger_kernel", True),
        ("torch_compile", True),
    ):
        assert wanted in extreme, wanted


def test_extreme_on_cpu_refuses_each_gpu_part_with_its_reason(monkeypatch):
    from hftrain import SFTConfig, presets

    monkeypatch.setattr(presets, "package_installed", lambda name: name != "liger_kernel")
    args = resolve_arguments(
        SFTConfig(output_dir="unused", optimization_level="extreme", report_to="none", use_cpu=True)
    )
    report = "\n".join(args.hftrain_preset_report)
    assert "activation offloading (TRL): refused (no CUDA GPU" in report
    assert "Liger kernels: refused (liger-kernel is not installed" in report
    assert "torch.compile: refused" in report and "8-bit AdamW (bitsandbytes): refused" in report
    assert "fused AdamW: optim='adamw_torch_fused' (instead of 8-bit AdamW)" in report
    assert not args.activation_offloading and not args.use_liger_kernel and not args.torch_compile
    assert args.activation_checkpointing is True and args.packing is True and args.optim == "adamw_torch_fused"


def test_liger_is_refused_without_a_gpu_even_when_installed(monkeypatch):
    from hftrain import SFTConfig, presets

    monkeypatch.setattr(presets, "package_installed", lambda name: True)
    args = resolve_arguments(
        SFTConfig(output_dir="unused", optimization_level="aggressive", report_to="none", use_cpu=True)
    )
    assert any("Liger kernels: refused (no CUDA GPU" in line for line in args.hftrain_preset_report)
    assert not args.use_liger_kernel


def test_presets_on_a_gpu_apply_every_part(monkeypatch):
    """With the probes saying CUDA (Hopper) and every package present, extreme applies all of its parts."""
    from hftrain import SFTConfig, presets

    monkeypatch.setattr(presets, "cuda_usable", lambda args=None: True)
    monkeypatch.setattr(presets, "cuda_capability", lambda: (9, 0))
    monkeypatch.setattr(presets, "package_installed", lambda name: True)
    gpu_plan = [(f, v, lv, (lambda args: None) if f == "bf16" else c, w) for f, v, lv, c, w in presets._PLAN]
    monkeypatch.setattr(presets, "_PLAN", gpu_plan)  # bf16's probe asks torch itself: say yes
    args = SFTConfig(output_dir="unused", optimization_level="extreme", report_to="none", use_cpu=True)
    changes, report = presets.preset_changes(args)
    assert changes == {
        "bf16": True,
        "tf32": True,
        "activation_checkpointing": True,  # TRL's default already, so no change in effect
        "activation_offloading": True,
        "packing": True,
        "use_liger_kernel": True,
        "torch_compile": True,
        "optim": "adamw_bnb_8bit",
    }
    aggressive, _ = presets.preset_changes(
        SFTConfig(output_dir="unused", optimization_level="aggressive", report_to="none", use_cpu=True)
    )
    assert "activation_offloading" not in aggressive and aggressive["use_liger_kernel"] is True


def test_the_diffusion_loop_gets_only_what_it_honours():
    """Liger and offloading are fields the diffusion arguments inherit but the loop refuses: never set."""
    from hftrain import DiffusionConfig

    args = resolve_arguments(DiffusionConfig(output_dir="unused", optimization_level="extreme", use_cpu=True))
    report = "\n".join(args.hftrain_preset_report)
    assert "Liger" not in report and "offloading" not in report and "packing" not in report
    assert args.use_liger_kernel is False and args.activation_checkpointing is True


def test_before_activation_checkpointing_existed_the_preset_sets_gradient_checkpointing(monkeypatch):
    """transformers < 5.20 (the GPU machine's 5.17) has no `activation_checkpointing` field: same setting, old name."""
    from hftrain import presets

    class Old:  # an arguments object of that transformers, as far as the preset reads it
        optimization_level = "standard"
        gradient_checkpointing = False
        use_cpu = True
        bf16 = False
        optim = "adamw_torch"

    monkeypatch.setattr(presets, "_defaults", lambda args: {"gradient_checkpointing": False, "optim": "adamw_torch"})
    changes, report = presets.preset_changes(Old())
    assert changes["gradient_checkpointing"] is True and "activation_checkpointing" not in changes
    assert any("activation checkpointing: gradient_checkpointing=True" in line for line in report)
