"""DiffusionTrainer: the host contract, schedules x predictions, samplers, EMA, exact resume and determinism,
pipelines that plain diffusers loads, refused settings, and hftrain's features (monitor, signals, alerts) on the loop.

Tiny UNets (16/16 channels, no attention) on 16x16 digits, a few steps, fixed seeds.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hftrain.diffusion import (
    NOISE_SCHEDULES,
    PREDICTION_TYPES,
    SAMPLERS,
    DiffusionConfig,
    DiffusionTrainer,
    ImagePipeline,
)
from hftrain.diffusion.builtin import DigitQuality, build_digits_unet, digits_dataset
from hftrain.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def digits():
    return digits_dataset(max_rows=40)


def tiny_unet(num_classes=None, seed=0):
    torch.manual_seed(seed)
    return build_digits_unet((16, 16), layers_per_block=1, attention=False, num_classes=num_classes)


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
        seed=0,
        num_inference_steps=2,
        eval_num_samples=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
    )
    values.update(overrides)
    return DiffusionConfig(**values)


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def weights(trainer):
    """Raw weights and EMA weights, detached copies."""
    raw = [p.detach().clone() for p in trainer.unet.parameters()]
    return raw, [p.detach().clone() for p in trainer.ema.shadow_params] if trainer.ema is not None else []


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def load_recipe(repo_root):
    spec = importlib.util.spec_from_file_location("diffusion_recipe", repo_root / "recipes" / "diffusion.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


# -- the host contract --------------------------------------------------------------------------------------------
def test_the_trainer_is_a_training_host(tmp_path, digits):
    from hftrain.host import DIFFUSION_FORMAT, BatchGeometry, TrainingHost

    trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, gradient_accumulation_steps=2), digits)
    assert isinstance(trainer, TrainingHost)
    assert trainer.checkpoint_format == DIFFUSION_FORMAT
    assert trainer.callbacks is trainer.callback_handler.callbacks
    assert trainer.batch_geometry() == BatchGeometry(per_device=8, accumulation=2, processes=1)
    assert trainer.args._hftrain_resolved  # resolved by hftrain.launch before use
    assert not hasattr(trainer, "_load_from_checkpoint") and not hasattr(trainer, "_load_optimizer_and_scheduler")


# -- configuration and bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, listed",
    [
        ("noise_schedule", "quadratic", "cosine"),
        ("sampler", "heun", "dpmsolver++"),
        ("prediction_type", "x0", "v_prediction"),
    ],
)
def test_unknown_names_list_the_valid_ones(tmp_path, field, value, listed):
    with pytest.raises(ConfigError, match=rf"{field}.*{value}.*{listed}"):
        config(tmp_path, **{field: value})


def test_karras_sigmas_only_where_the_sampler_supports_them(tmp_path):
    with pytest.raises(ConfigError, match="karras_sigmas.*ddim"):
        config(tmp_path, sampler="ddim", karras_sigmas=True)
    with pytest.raises(ConfigError, match="karras_sigmas: not with noise_schedule cosine"):
        config(tmp_path, sampler="euler", karras_sigmas=True, noise_schedule="cosine")
    assert config(tmp_path, sampler="euler", karras_sigmas=True, noise_schedule="linear").karras_sigmas


@pytest.mark.parametrize(
    "field, value",
    [
        ("deepspeed", "ds_config.json"),
        ("fsdp", "full_shard"),
        ("optim", "sgd"),
        ("label_smoothing_factor", 0.1),
        ("load_best_model_at_end", True),
        ("save_strategy", "best"),
        ("lr_scheduler_type", "reduce_lr_on_plateau"),
        ("accelerator_config", {"split_batches": True}),
        ("eval_metrics", ["bleu"]),
        ("remove_unused_columns", False),
        ("torch_empty_cache_steps", 10),
        ("use_liger_kernel", True),
    ],
)
def test_fields_the_loop_does_not_honour_are_refused_by_name(tmp_path, field, value):
    extra = (
        {"metric_for_best_model": "eval_loss", "eval_strategy": "steps", "save_strategy": "steps"}
        if field in ("load_best_model_at_end", "save_strategy")
        else {}
    )
    with pytest.raises(ConfigError, match=rf"^{field}: DiffusionTrainer does not"):
        config(tmp_path, **{**extra, field: value})


def test_every_inherited_field_is_honoured_or_refused(tmp_path):
    import copy
    import dataclasses

    from hftrain.config import TrainingArguments
    from hftrain.diffusion.config import HONOURED, HONOURED_VALUES, refuse_unsupported

    base = config(tmp_path)
    for f in dataclasses.fields(TrainingArguments):  # transformers' fields and hftrain's
        changed = copy.copy(base)
        object.__setattr__(changed, f.name, object())  # a value no default equals
        refused = []
        for constructed in (False, True):
            try:
                refuse_unsupported(changed, constructed=constructed)
            except ConfigError as exc:
                refused.append(str(exc))
        if f.name in HONOURED and f.name not in HONOURED_VALUES:
            assert refused == [], f.name
        else:
            assert len(refused) == 1 and refused[0].startswith(f"{f.name}: DiffusionTrainer does not"), f.name


@pytest.mark.parametrize("optim, fused", [("adamw_torch_fused", True), ("adamw_torch", None)])
def test_optimizer_and_activation_checkpointing_are_applied(tmp_path, digits, optim, fused):
    trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, optim=optim, gradient_checkpointing=True), digits)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.defaults["fused"] is fused
    assert trainer.model.is_gradient_checkpointing
    trainer.train()
    assert trainer.state.global_step == 2 and all(np.isfinite(losses(trainer)))


def test_optimization_level_standard_announces_only_what_the_loop_applies(tmp_path, repo_root, digits):
    recipe = load_recipe(repo_root)
    _, args, _, _ = recipe.parse_args(["--output_dir", str(tmp_path / "o"), "--optimization_level", "standard"])
    report = " | ".join(args.hftrain_preset_report)
    assert "activation_checkpointing=True" in report and "optim='adamw_torch_fused'" in report
    assert "packing" not in report  # the diffusion loop has no packing, so the preset does not announce it
    trainer = DiffusionTrainer(tiny_unet(), args, digits)
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer.model.is_gradient_checkpointing


def test_bad_data_fails_before_anything_is_written(tmp_path, digits):
    from datasets import Dataset
    from PIL import Image

    args = config(tmp_path)
    with pytest.raises(DataError, match="image_column: the dataset has no column 'image'.*'label'"):
        DiffusionTrainer(tiny_unet(), args, digits.remove_columns("image"))
    mixed = Dataset.from_dict({"image": [Image.new("L", (16, 16)), Image.new("L", (12, 12))]})
    with pytest.raises(DataError, match=r"mixed sizes \(16x16 \(row 0\), 12x12 \(row 1\)\).*image_resize"):
        DiffusionTrainer(tiny_unet(), args, mixed)
    with pytest.raises(ConfigError, match=r"resolution: 17 cannot pass the UNet's 1 downsamplings; use a multiple"):
        DiffusionTrainer(tiny_unet(), config(tmp_path, resolution=17), digits)
    with pytest.raises(ConfigError, match="class_column: the UNet is class-conditional"):
        DiffusionTrainer(tiny_unet(num_classes=10), args, digits)
    assert not os.path.exists(args.output_dir)
    # With image_resize the mixed sizes are accepted and come out at the UNet's resolution.
    trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, image_resize=True), mixed)
    assert trainer.train_dataset[1]["pixel_values"].shape == (1, 16, 16)


# -- training -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [s for s in NOISE_SCHEDULES if s != "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_every_schedule_and_prediction_type_trains(tmp_path, digits, schedule, prediction):
    model = tiny_unet()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = DiffusionTrainer(model, config(tmp_path, noise_schedule=schedule, prediction_type=prediction), digits)
    trainer.train()
    assert trainer.noise_scheduler.config.beta_schedule == NOISE_SCHEDULES[schedule]
    assert trainer.noise_scheduler.config.prediction_type == prediction
    assert len(losses(trainer)) == 2 and all(np.isfinite(losses(trainer)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_min_snr_weighting_and_noise_offset_change_the_loss(tmp_path, digits):
    def first_loss(**kw):
        trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, max_steps=1, **kw), digits)
        trainer.train()
        return losses(trainer)[0]

    plain = first_loss()
    assert first_loss() == plain  # same seed, same loss: the differences below come from the features
    assert first_loss(snr_gamma=5.0) != pytest.approx(plain, rel=1e-4)
    assert first_loss(noise_offset=0.5) != pytest.approx(plain, rel=1e-4)


def test_bf16_gradient_accumulation_and_torch_compile(tmp_path, digits):
    trainer = DiffusionTrainer(
        tiny_unet(),
        config(tmp_path, bf16=True, use_cpu=True, gradient_accumulation_steps=2, torch_compile_backend="eager"),
        digits,
    )
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.state.global_step == 2 and all(np.isfinite(losses(trainer)))


# -- sampling -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, karras", [(s, False) for s in SAMPLERS] + [("euler", True), ("dpmsolver++", True)])
def test_every_sampler_generates(tmp_path, digits, sampler, karras):
    trainer = DiffusionTrainer(
        tiny_unet(), config(tmp_path, sampler=sampler, karras_sigmas=karras, noise_schedule="sigmoid"), digits
    )
    pipe = trainer.pipeline()
    assert type(pipe.scheduler).__name__ == type(SAMPLERS[sampler]()).__name__
    assert getattr(pipe.scheduler.config, "use_karras_sigmas", False) == karras
    if sampler != "ddpm":  # never starts at the last training timestep (see schedules.sampling_scheduler)
        assert pipe.scheduler.config.timestep_spacing == "leading"
    images = pipe(
        batch_size=3, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    assert images.shape == (3, 1, 16, 16) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0


def test_evaluation_saves_a_scored_grid(tmp_path, digits):
    trainer = DiffusionTrainer(
        tiny_unet(),
        config(tmp_path, eval_strategy="steps", eval_steps=2),
        digits,
        eval_dataset=digits.select(range(8)),
        quality_fn=DigitQuality(),
    )
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_quality" in h]
    assert [h["step"] for h in evals] == [2]
    assert {"eval_loss", "eval_confident_share", "eval_class_entropy"} <= set(evals[0])
    assert os.path.isfile(tmp_path / "out" / "samples" / "step-000002.png")


def test_digit_quality_separates_real_digits_from_noise(digits):
    real = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)[None] for im in digits["image"]])
    score = DigitQuality()
    assert score(real)["confident_share"] > 0.6 and score(real)["class_entropy"] > 0.9
    assert score(torch.rand(40, 1, 16, 16))["quality"] < 0.2


# -- EMA, checkpoints, resume, pipelines ---------------------------------------------------------------------------
def test_ema_weights_differ_and_are_the_ones_saved(tmp_path, digits):
    from diffusers import DDPMPipeline

    trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, max_steps=3, ema_decay=0.5, ema_use_warmup=False), digits)
    trainer.train()
    trainer.save_model()
    raw = [p.detach().clone() for p in trainer.model.parameters()]
    ema = trainer.ema.shadow_params
    assert any(not torch.equal(a, b) for a, b in zip(raw, ema))
    from diffusers import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(trainer.args.output_dir)  # plain diffusers, no flag
    assert isinstance(loaded, DDPMPipeline)
    saved = list(loaded.unet.parameters())
    assert all(torch.equal(s, e) for s, e in zip(saved, ema))
    assert all(torch.equal(a, b) for a, b in zip(raw, trainer.model.parameters()))  # raw weights put back


def test_class_conditional_pipeline_loads_and_generates(tmp_path, digits):
    trainer = DiffusionTrainer(tiny_unet(num_classes=10), config(tmp_path, class_column="label"), digits)
    trainer.train()
    saved = trainer.save_model()
    pipe = ImagePipeline.from_pretrained(saved)  # hftrain's class: runs no code from the folder
    assert type(pipe) is ImagePipeline
    images = pipe(
        class_labels=[3, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


def test_saved_conditional_pipeline_loads_with_plain_diffusers(tmp_path, digits):
    from diffusers import DiffusionPipeline

    trainer = DiffusionTrainer(tiny_unet(num_classes=10), config(tmp_path, class_column="label"), digits)
    trainer.train()
    saved = trainer.save_model()
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers' own guard for shipped code
        DiffusionPipeline.from_pretrained(saved)
    pipe = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    assert type(pipe).__name__ == "ImagePipeline" and type(pipe) is not ImagePipeline  # the folder's copy
    images = pipe(class_labels=[1, 2, 3], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(images) == 3 and images[0].size == (16, 16)
    reference = ImagePipeline.from_pretrained(saved)(
        class_labels=[1, 2, 3], num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in reference]


def test_text_conditional_unet_trains_and_its_pipeline_generates(tmp_path, digits):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hftrain.builtin import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 8
    torch.manual_seed(0)
    encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    captioned = digits.map(lambda row: {"text": f"digit {row['label']}"})
    with pytest.raises(ConfigError, match="caption_column: the UNet has cross-attention"):
        DiffusionTrainer(unet, config(tmp_path), captioned)
    trainer = DiffusionTrainer(
        unet,
        config(tmp_path, caption_column="text", eval_strategy="steps", eval_steps=2),
        captioned,
        text_encoder=encoder,
        tokenizer=tokenizer,
    )
    trainer.train()
    assert len(losses(trainer)) == 2 and os.path.isfile(tmp_path / "out" / "samples" / "step-000002.png")
    trainer.save_model()
    from diffusers import DiffusionPipeline

    for pipe in (
        ImagePipeline.from_pretrained(trainer.args.output_dir),
        DiffusionPipeline.from_pretrained(trainer.args.output_dir, trust_remote_code=True),
    ):
        images = pipe(
            prompt=["digit 3", "digit 7"],
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images
        assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


class _Crash(TrainerCallback):
    """Simulates a kill: raises as step `at` begins (the checkpoint before it is on disk)."""

    def __init__(self, at):
        self.at = at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("killed")


def test_resume_mid_epoch_reproduces_the_run_exactly(tmp_path, digits):
    # 40 images / batch 8 = 5 steps per epoch; checkpoint at step 3 (mid-epoch), killed at step 4, run to 8.
    settings = dict(max_steps=8, save_strategy="steps", save_steps=3, save_total_limit=2, ema_decay=0.9)
    full = DiffusionTrainer(tiny_unet(), config(tmp_path / "a", **settings), digits)
    full.train()
    killed_args = config(tmp_path / "b", **settings)
    with pytest.raises(KeyboardInterrupt):
        DiffusionTrainer(tiny_unet(), killed_args, digits, callbacks=[_Crash(at=4)]).train()
    from hftrain.tracking import lifecycle

    assert not lifecycle.installed()  # the crashed run told its callbacks: no signal handler of it stays behind
    checkpoint = os.path.join(killed_args.output_dir, "checkpoint-3")
    assert set(os.listdir(checkpoint)) >= {
        "data_state.json",
        "optimizer.pt",
        "rng_state_0.pth",
        "scheduler.pt",
        "trainer_state.json",
        "unet",
        "unet_ema",
    }
    from hftrain.checkpoints import checkpoint_problem

    assert checkpoint_problem(checkpoint) is None  # judged complete by its own layout (unet/, no model weights)
    resumed = DiffusionTrainer(tiny_unet(seed=1), config(tmp_path / "b", **settings), digits)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 8
    assert losses(resumed) == losses(full) and len(losses(full)) == 8
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), full.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.shadow_params, full.ema.shadow_params))
    # save_total_limit=2 keeps the two newest of checkpoint-3/6/8.
    assert sorted(os.listdir(full.args.output_dir)) == ["checkpoint-6", "checkpoint-8"]


class _StopAt(TrainerCallback):
    """Ends the run after step `at` (its schedule still spans max_steps, as the uninterrupted run's)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            control.should_training_stop = True


@pytest.mark.parametrize("accumulation", [1, 2])
def test_stop_at_a_checkpoint_and_resume_is_bit_exact(tmp_path, digits, accumulation):
    from hftrain.checkpoints import last_valid_checkpoint

    n = 6  # 40 images / batch 8: 5 batches an epoch, so the stop at n/2 is mid-epoch
    settings = dict(
        max_steps=n,
        save_strategy="steps",
        save_steps=n // 2,
        gradient_accumulation_steps=accumulation,
        ema_decay=0.9,
        snr_gamma=5.0,
        noise_offset=0.1,
    )
    full = DiffusionTrainer(tiny_unet(), config(tmp_path / "full", **settings), digits)
    full.train()
    first = DiffusionTrainer(tiny_unet(), config(tmp_path / "part", **settings), digits, callbacks=[_StopAt(n // 2)])
    first.train()
    assert first.state.global_step == n // 2
    assert last_valid_checkpoint(str(tmp_path / "part" / "out")).endswith(f"checkpoint-{n // 2}")
    resumed = DiffusionTrainer(tiny_unet(seed=1), config(tmp_path / "part", **settings), digits)
    resumed.train(resume_from_checkpoint=True)  # the newest complete checkpoint in output_dir
    assert resumed.state.global_step == n
    assert losses(resumed) == losses(full)
    full_raw, full_ema = weights(full)
    resumed_raw, resumed_ema = weights(resumed)
    assert same(resumed_raw, full_raw) and same(resumed_ema, full_ema)


# -- callbacks ----------------------------------------------------------------------------------------------------
class _Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: object.__getattribute__(self, "events").append(name)
        return object.__getattribute__(self, name)


class _Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


def test_callback_events_match_transformers_trainer(tmp_path, digits):
    import transformers

    cadence = dict(
        max_steps=4,
        gradient_accumulation_steps=2,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        per_device_eval_batch_size=4,
        disable_tqdm=True,
        report_to="none",
        seed=0,
    )
    reference = _Recorder()
    rows = [{"x": torch.randn(4), "labels": torch.tensor(1.0)} for _ in range(16)]
    transformers.Trainer(
        model=_Regressor(),
        args=transformers.TrainingArguments(
            output_dir=str(tmp_path / "t"), use_cpu=True, per_device_train_batch_size=4, **cadence
        ),
        train_dataset=rows,
        eval_dataset=rows[:4],
        callbacks=[reference],
    ).train()
    ours = _Recorder()
    # 16 images / batch 4 = 4 batches per epoch, as above; one sampling batch per evaluation, as one eval batch above.
    DiffusionTrainer(
        tiny_unet(),
        config(tmp_path, per_device_train_batch_size=4, eval_num_samples=4, **cadence),
        digits.select(range(16)),
        callbacks=[ours],
    ).train()
    assert "on_substep_end" in ours.events and "on_save" in ours.events and "on_prediction_step" in ours.events
    assert ours.events == reference.events


def test_the_tracker_records_a_diffusion_run(tmp_path, digits):
    from hftrain.tracking.store import TrackerStore

    trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, eval_strategy="steps", eval_steps=2), digits)
    assert "TrackerCallback" in [type(c).__name__ for c in trainer.callback_handler.callbacks]
    trainer.train()
    store = TrackerStore(os.environ["HFTRAIN_TRACKER_DB"])
    run = store.runs()[0]
    assert run["status"] == "finished"
    assert [step for step, *_ in store.curve(run["id"], "loss")] == [1, 2]
    assert any(
        "samples" in str(e.get("payload")) or "samples" in str(e)
        for e in store.events(run["id"]) + store.artifacts(run["id"])
    )


# -- hftrain's features on the loop -----------------------------------------------------------------------------
class _Inject(TrainerCallback):
    """During step `at`, makes the UNet's prediction NaN (or raises `error`); snapshots weights around that step."""

    def __init__(self, trainer, at, error=None):
        self.trainer, self.at, self.error, self.active = trainer, at, error, False
        trainer.model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.active and torch.is_grad_enabled():
            if self.error is not None:
                raise self.error
            output.sample = output.sample * float("nan")
        return output

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 == self.at
        if self.active:
            self.before, self.moments_before = weights(self.trainer), self._moments()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            self.active, self.after, self.moments = False, weights(self.trainer), self._moments()

    def _moments(self):
        return [s["exp_avg"].clone() for s in self.trainer.optimizer.state.values()]


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])
def test_monitor_skip_keeps_a_nan_step_out_of_the_weights(tmp_path, digits, optim):
    args = config(tmp_path, max_steps=4, monitor_nonfinite_action="skip", optim=optim)
    trainer = DiffusionTrainer(tiny_unet(), args, digits)
    inject = _Inject(trainer, at=3)
    trainer.callback_handler.add_callback(inject)
    trainer.train()
    assert trainer.state.global_step == 4  # the step counts, its update does not
    assert same(inject.after[0], inject.before[0]) and same(inject.moments, inject.moments_before)
    assert all(torch.isfinite(p).all() for p in inject.after[1])
    if optim == "adamw_torch":  # dropped through the contract (drop_update): the EMA leaves the step out too
        assert same(inject.after[1], inject.before[1])
    monitor = next(cb for cb in trainer.callbacks if type(cb).__name__ == "MonitorCallback")
    assert monitor.skipped_steps == [3]
    assert all(np.isfinite(losses(trainer)))  # logging_nan_inf_filter, as in Trainer
    assert not same(weights(trainer)[0], inject.after[0])  # training went on


def test_monitor_rollback_reloads_the_last_checkpoint(tmp_path, digits):
    args = config(tmp_path, max_steps=5, save_strategy="steps", save_steps=2, monitor_nonfinite_action="rollback")
    trainer = DiffusionTrainer(tiny_unet(), args, digits)
    inject = _Inject(trainer, at=4)  # checkpoint-2 is the newest complete one when step 4 goes bad
    trainer.callback_handler.add_callback(inject)
    trainer.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-2")
    from diffusers.training_utils import EMAModel

    saved_raw = list(type(trainer.unet).from_pretrained(os.path.join(checkpoint, "unet")).parameters())
    saved_ema = EMAModel.from_pretrained(os.path.join(checkpoint, "unet_ema"), model_cls=type(trainer.unet))
    assert not same(inject.before[0], saved_raw)  # step 3 had moved the weights on
    assert same(inject.after[0], saved_raw) and same(inject.after[1], saved_ema.shadow_params)
    saved_moments = [s["exp_avg"] for s in torch.load(os.path.join(checkpoint, "optimizer.pt"))["state"].values()]
    assert same(inject.moments, saved_moments)
    assert trainer.state.global_step == 5
    monitor = next(cb for cb in trainer.callbacks if type(cb).__name__ == "MonitorCallback")
    assert monitor.rollbacks == 1


def test_a_failing_loss_is_alerted_and_recorded_as_failed(tmp_path, digits):
    from hftrain.tracking.store import TrackerStore

    trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, max_steps=4), digits)
    trainer.callback_handler.add_callback(_Inject(trainer, at=2, error=RuntimeError("loss exploded")))
    with pytest.raises(RuntimeError, match="loss exploded"):
        trainer.train()
    notifier = next(cb.notifier for cb in trainer.callbacks if type(cb).__name__ == "AlertCallback")
    failures = [a for a in notifier.events if a["event"] == "failure"]
    assert failures and "training failed: RuntimeError: loss exploded" in failures[0]["message"]
    store = TrackerStore(os.environ["HFTRAIN_TRACKER_DB"])
    run = store.runs()[0]
    assert run["status"] == "failed"
    assert any(e["kind"] == "failure" for e in store.events(run["id"]))


class _Terminate(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("signal_exit", [False, True])
def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, digits, signal_exit):
    from hftrain.checkpoints import checkpoint_problem

    args = config(tmp_path, max_steps=6, signal_exit=signal_exit)  # save_strategy "no": the signal asks for it
    trainer = DiffusionTrainer(tiny_unet(), args, digits, callbacks=[_Terminate(at=2)])
    previous = signal.getsignal(signal.SIGTERM)
    if signal_exit:
        with pytest.raises(SystemExit) as exited:
            trainer.train()
        assert exited.value.code == 128 + signal.SIGTERM
    else:
        trainer.train()
    assert signal.getsignal(signal.SIGTERM) == previous  # hftrain's handler is gone again
    assert trainer.state.global_step == 2
    checkpoint = os.path.join(args.output_dir, "checkpoint-2")
    assert checkpoint_problem(checkpoint) is None
    resumed = DiffusionTrainer(tiny_unet(seed=1), config(tmp_path, max_steps=6, signal_exit=signal_exit), digits)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 6


# -- recipe -------------------------------------------------------------------------------------------------------
TINY = (
    "--max_steps 2 --eval_steps 2 --save_steps 2 --eval_num_samples 10 --num_inference_steps 2 "
    "--unet_block_out_channels 16 16 --unet_attention false --max_train_samples 32 --logging_steps 1"
).split()


def test_recipe_trains_with_tiny_overrides_and_rejects_bad_names(tmp_path, repo_root, monkeypatch, capsys):
    recipe = load_recipe(repo_root)
    out = tmp_path / "recipe"
    with pytest.raises(ConfigError, match="sampler.*valid: ddim, ddpm, dpmsolver\\+\\+, euler, euler_ancestral"):
        recipe.main(["--output_dir", str(out), "--sampler", "plms"])
    assert not out.exists()
    trainer, metrics = recipe.main(["--output_dir", str(out), *TINY])
    assert {"eval_quality", "eval_confident_share", "eval_class_entropy"} <= set(metrics)
    assert (out / "samples" / "step-000002.png").is_file() and (out / "model_index.json").is_file()
    assert (out / "checkpoint-2" / "unet_ema").is_dir()
    assert "trust_remote_code=True" in capsys.readouterr().out  # the final message says how diffusers loads it
    assert "trust_remote_code=True" in (out / "README.md").read_text()

    # --push_to_hub: the pipeline, the sample grid, the card and the run history go up; checkpoints do not.
    from test_hub import FakeHub

    monkeypatch.setenv("HF_TOKEN", "hf_test_token_123")
    hub = FakeHub(monkeypatch)
    pushed = tmp_path / "pushed"
    recipe.main([*TINY, "--output_dir", str(pushed), "--push_to_hub", "true", "--hub_model_id", "someone/digits"])
    (_, token, repo, _), (_, _, _, upload) = hub.calls
    assert (token, repo, upload["repo_id"]) == ("hf_test_token_123", "someone/digits", "someone/digits")
    files = upload["allow_patterns"]
    assert {
        "model_index.json",
        "README.md",
        "samples/step-000002.png",
        "run_history/history.csv",
        "unet/config.json",
        "hftrain_image_pipeline.py",
    } <= set(files)
    assert not [f for f in files if f.startswith("checkpoint-")]
    card = (pushed / "README.md").read_text()
    assert "![samples at step 2](samples/step-000002.png)" in card and "eval_quality" in card


def test_recipe_resumes_exactly_automatically_and_from_a_named_checkpoint(tmp_path, repo_root, capsys, monkeypatch):
    recipe = load_recipe(repo_root)
    trained = []  # global_step before every optimizer step this process runs
    step = DiffusionTrainer._optimizer_step
    monkeypatch.setattr(
        DiffusionTrainer, "_optimizer_step", lambda s, g: trained.append(s.state.global_step) or step(s, g)
    )
    # A constant learning rate, so the schedule of a 2-step run is the first half of a 4-step run's.
    run = [*TINY, "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--eval_strategy", "no"]
    full, _ = recipe.main([*run, "--output_dir", str(tmp_path / "full"), "--max_steps", "4"])
    part = tmp_path / "part"
    recipe.main([*run, "--output_dir", str(part), "--max_steps", "2"])
    capsys.readouterr()
    trained.clear()
    auto, _ = recipe.main([*run, "--output_dir", str(part), "--max_steps", "4"])  # auto_resume is on by default
    assert f"resuming from {part / 'checkpoint-2'}" in capsys.readouterr().out
    assert trained == [2, 3]  # it continued from the checkpoint's step; steps 1-2 were not trained again
    trained.clear()
    named, _ = recipe.main(
        [
            *run,
            "--output_dir",
            str(tmp_path / "named"),
            "--max_steps",
            "4",
            "--auto_resume",
            "false",
            "--resume_from_checkpoint",
            str(part / "checkpoint-2"),
        ]
    )
    assert f"resuming from {part / 'checkpoint-2'}" in capsys.readouterr().out
    assert trained == [2, 3]
    for resumed in (auto, named):
        assert resumed.state.global_step == 4
        assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3, 4]
        assert losses(resumed) == losses(full)
        assert same(weights(resumed)[0], weights(full)[0]) and same(weights(resumed)[1], weights(full)[1])


def test_two_fresh_processes_train_identical_weights(tmp_path, repo_root, python):
    from safetensors.torch import load_file

    def run(name):
        out = tmp_path / name
        # An evaluation (sampling, eval_loss) at step 2 runs inside the training: it must not move the run either.
        command = [
            python,
            str(repo_root / "recipes" / "diffusion.py"),
            *TINY,
            "--max_steps",
            "3",
            "--save_steps",
            "3",
            "--output_dir",
            str(out),
        ]
        result = subprocess.run(
            command,
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return [
            load_file(out / folder / "diffusion_pytorch_model.safetensors")
            for folder in ("unet", "checkpoint-3/unet", "checkpoint-3/unet_ema")
        ]

    first, second = run("a"), run("b")
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_samplers_skip_the_cosine_schedules_singular_last_timestep():
    from hftrain.diffusion.schedules import sampling_scheduler, training_scheduler

    train = training_scheduler("cosine", "epsilon", 1000)
    for name in ("ddim", "euler", "euler_ancestral", "dpmsolver++"):
        sampler = sampling_scheduler(name, train)
        sampler.set_timesteps(20)
        assert int(sampler.timesteps[0]) <= 951, name  # t=999 has sigma ~2e4 and saturated every sample


def test_curriculum_orders_diffusion_training_and_resumes_exactly(tmp_path, digits):
    # Labels 0-9 as a toy difficulty: 30% of the rows (the lowest labels) are open at first, all by 50% of training.
    settings = dict(
        max_steps=8,
        save_strategy="steps",
        save_steps=3,
        curriculum="column",
        curriculum_column="label",
        curriculum_pacing="linear",
        curriculum_start=0.3,
        curriculum_full_at=0.5,
    )

    class SamplerEpochs(TrainerCallback):  # which epoch's order the sampler served at each step
        def __init__(self):
            self.seen = {}

        def on_step_end(self, args, state, control, **kwargs):
            from hftrain.curriculum import CurriculumCallback

            callback = next(cb for cb in trainer_under_test.callbacks if isinstance(cb, CurriculumCallback))
            self.seen[state.global_step] = callback.sampler.epoch

    epochs = SamplerEpochs()
    full = trainer_under_test = DiffusionTrainer(
        tiny_unet(), config(tmp_path / "a", **settings), digits, callbacks=[epochs]
    )
    full.train()
    assert epochs.seen == {step: (step - 1) // 5 for step in range(1, 9)}  # 40 rows / batch 8: 5 steps an epoch
    logged = [h for h in full.state.log_history if "curriculum/open_share" in h]
    assert len(logged) == 8 and logged[0]["curriculum/open_share"] < logged[-1]["curriculum/open_share"] == 1.0
    assert logged[0]["curriculum/mean_difficulty"] < np.mean(digits["label"])  # easy digits first
    killed_args = config(tmp_path / "b", **settings)
    with pytest.raises(KeyboardInterrupt):
        DiffusionTrainer(tiny_unet(), killed_args, digits, callbacks=[_Crash(at=4)]).train()
    epochs.seen.clear()
    resumed = trainer_under_test = DiffusionTrainer(
        tiny_unet(seed=1), config(tmp_path / "b", **settings), digits, callbacks=[epochs]
    )
    resumed.train(resume_from_checkpoint=os.path.join(killed_args.output_dir, "checkpoint-3"))
    assert epochs.seen == {step: (step - 1) // 5 for step in range(4, 9)}
    assert losses(resumed) == losses(full)
    assert [h["curriculum/mean_difficulty"] for h in resumed.state.log_history if "curriculum/open_share" in h] == [
        h["curriculum/mean_difficulty"] for h in logged
    ]
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), full.model.parameters()))
    with pytest.raises(ConfigError, match="the `loss` scorer scores text"):
        DiffusionTrainer(tiny_unet(), config(tmp_path / "c", curriculum="loss"), digits)
