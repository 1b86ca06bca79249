"""DiffusionTrainer: schedules x predictions, samplers, EMA, checkpoints and exact resume, callback events, errors.

Tiny UNets (16/16 channels, no attention) on 16x16 digits, a few steps, fixed seeds.
"""

from __future__ import annotations

import os

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
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=2, logging_steps=1,
                  save_strategy="no", disable_tqdm=True, report_to="none", seed=0, num_inference_steps=2,
                  eval_num_samples=4, per_device_eval_batch_size=4, learning_rate=1e-3)
    values.update(overrides)
    return DiffusionConfig(**values)


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# -- configuration and bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, listed",
    [("noise_schedule", "quadratic", "cosine"), ("sampler", "heun", "dpmsolver++"),
     ("prediction_type", "x0", "v_prediction")],
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


def test_bad_data_fails_before_anything_is_written(tmp_path, digits):
    from datasets import Dataset
    from PIL import Image

    args = config(tmp_path)
    with pytest.raises(DataError, match="image_column: the dataset has no column 'image'.*'label'"):
        DiffusionTrainer(tiny_unet(), args, digits.remove_columns("image"))
    mixed = Dataset.from_dict({"image": [Image.new("L", (16, 16)), Image.new("L", (12, 12))]})
    with pytest.raises(DataError, match=r"mixed sizes \(16x16 \(row 0\), 12x12 \(row 1\)\).*image_resize"):
        DiffusionTrainer(tiny_unet(), args, mixed)
    with pytest.raises(ConfigError, match=r"resolution: 17 cannot pass the UNet's 1 downsamplings; use a multiple of 2"):
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
        tiny_unet(), config(tmp_path, bf16=True, use_cpu=True, gradient_accumulation_steps=2, torch_compile_backend="eager"), digits
    )
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.state.global_step == 2 and all(np.isfinite(losses(trainer)))


# -- sampling -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, karras", [(s, False) for s in SAMPLERS] + [("euler", True), ("dpmsolver++", True)])
def test_every_sampler_generates(tmp_path, digits, sampler, karras):
    trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, sampler=sampler, karras_sigmas=karras,
                                                    noise_schedule="sigmoid"), digits)
    pipe = trainer.pipeline()
    assert type(pipe.scheduler).__name__ == type(SAMPLERS[sampler]()).__name__
    assert getattr(pipe.scheduler.config, "use_karras_sigmas", False) == karras
    if sampler != "ddpm":  # never starts at the last training timestep (see schedules.sampling_scheduler)
        assert pipe.scheduler.config.timestep_spacing == "leading"
    images = pipe(batch_size=3, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (3, 1, 16, 16) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0


def test_evaluation_saves_a_scored_grid(tmp_path, digits):
    trainer = DiffusionTrainer(tiny_unet(), config(tmp_path, eval_strategy="steps", eval_steps=2),
                               digits, eval_dataset=digits.select(range(8)), quality_fn=DigitQuality())
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
    saved = list(DDPMPipeline.from_pretrained(trainer.args.output_dir).unet.parameters())
    assert all(torch.equal(s, e) for s, e in zip(saved, ema))
    assert all(torch.equal(a, b) for a, b in zip(raw, trainer.model.parameters()))  # raw weights put back


def test_class_conditional_pipeline_loads_and_generates(tmp_path, digits):
    trainer = DiffusionTrainer(tiny_unet(num_classes=10), config(tmp_path, class_column="label"), digits)
    trainer.train()
    trainer.save_model()
    pipe = ImagePipeline.from_pretrained(trainer.args.output_dir)
    images = pipe(class_labels=[3, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


def test_text_conditional_unet_trains_and_its_pipeline_generates(tmp_path, digits):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hftrain.builtin import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 8
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=8,
    )
    captioned = digits.map(lambda row: {"text": f"digit {row['label']}"})
    with pytest.raises(ConfigError, match="caption_column: the UNet has cross-attention"):
        DiffusionTrainer(unet, config(tmp_path), captioned)
    trainer = DiffusionTrainer(unet, config(tmp_path, caption_column="text", eval_strategy="steps", eval_steps=2),
                               captioned, text_encoder=encoder, tokenizer=tokenizer)
    trainer.train()
    assert len(losses(trainer)) == 2 and os.path.isfile(tmp_path / "out" / "samples" / "step-000002.png")
    trainer.save_model()
    pipe = ImagePipeline.from_pretrained(trainer.args.output_dir)
    images = pipe(prompt=["digit 3", "digit 7"], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
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
    assert set(os.listdir(checkpoint)) >= {"data_state.json", "optimizer.pt", "rng_state_0.pth", "scheduler.pt",
                                           "trainer_state.json", "unet", "unet_ema"}
    resumed = DiffusionTrainer(tiny_unet(seed=1), config(tmp_path / "b", **settings), digits)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert losses(resumed) == losses(full) and len(losses(full)) == 8
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), full.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.shadow_params, full.ema.shadow_params))
    # save_total_limit=2 keeps the two newest of checkpoint-3/6/8.
    assert sorted(os.listdir(full.args.output_dir)) == ["checkpoint-6", "checkpoint-8"]


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

    cadence = dict(max_steps=4, gradient_accumulation_steps=2, logging_steps=2, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                   save_steps=2, per_device_eval_batch_size=4, disable_tqdm=True, report_to="none", seed=0)
    reference = _Recorder()
    rows = [{"x": torch.randn(4), "labels": torch.tensor(1.0)} for _ in range(16)]
    transformers.Trainer(
        model=_Regressor(), args=transformers.TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True,
                                                                per_device_train_batch_size=4, **cadence),
        train_dataset=rows, eval_dataset=rows[:4], callbacks=[reference],
    ).train()
    ours = _Recorder()
    # 16 images / batch 4 = 4 batches per epoch, as above; one sampling batch per evaluation, as one eval batch above.
    DiffusionTrainer(tiny_unet(), config(tmp_path, per_device_train_batch_size=4, eval_num_samples=4, **cadence),
                     digits.select(range(16)), callbacks=[ours]).train()
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
    assert any("samples" in str(e.get("payload")) or "samples" in str(e) for e in
               store.events(run["id"]) + store.artifacts(run["id"]))


# -- recipe -------------------------------------------------------------------------------------------------------
def test_recipe_trains_with_tiny_overrides_and_rejects_bad_names(tmp_path, repo_root, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("diffusion_recipe", repo_root / "recipes" / "diffusion.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "recipe"
    with pytest.raises(ConfigError, match="sampler.*valid: ddim, ddpm, dpmsolver\\+\\+, euler, euler_ancestral"):
        recipe.main(["--output_dir", str(out), "--sampler", "plms"])
    assert not out.exists()
    tiny = ["--output_dir", str(out), "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2",
            "--eval_num_samples", "10", "--num_inference_steps", "2", "--unet_block_out_channels", "16", "16",
            "--unet_attention", "false", "--max_train_samples", "32", "--logging_steps", "1"]
    trainer, metrics = recipe.main(tiny)
    assert {"eval_quality", "eval_confident_share", "eval_class_entropy"} <= set(metrics)
    assert (out / "samples" / "step-000002.png").is_file() and (out / "model_index.json").is_file()
    assert (out / "checkpoint-2" / "unet_ema").is_dir()
    again, _ = recipe.main(tiny + ["--max_steps", "3"])  # resumes from checkpoint-2 in output_dir
    assert again.state.global_step == 3 and [h["step"] for h in again.state.log_history if "loss" in h] == [1, 2, 3]

    # --push_to_hub: the pipeline, the sample grid, the card and the run history go up; checkpoints do not.
    from test_hub import FakeHub

    monkeypatch.setenv("HF_TOKEN", "hf_test_token_123")
    hub = FakeHub(monkeypatch)
    pushed = tmp_path / "pushed"
    recipe.main([*tiny[2:], "--output_dir", str(pushed), "--push_to_hub", "true", "--hub_model_id", "someone/digits"])
    (_, token, repo, _), (_, _, _, upload) = hub.calls
    assert (token, repo, upload["repo_id"]) == ("hf_test_token_123", "someone/digits", "someone/digits")
    files = upload["allow_patterns"]
    assert {"model_index.json", "README.md", "samples/step-000002.png", "run_history/history.csv",
            "unet/config.json"} <= set(files)
    assert not [f for f in files if f.startswith("checkpoint-")]
    card = (pushed / "README.md").read_text()
    assert "![samples at step 2](samples/step-000002.png)" in card and "eval_quality" in card


def test_samplers_skip_the_cosine_schedules_singular_last_timestep():
    from hftrain.diffusion.schedules import sampling_scheduler, training_scheduler

    train = training_scheduler("cosine", "epsilon", 1000)
    for name in ("ddim", "euler", "euler_ancestral", "dpmsolver++"):
        sampler = sampling_scheduler(name, train)
        sampler.set_timesteps(20)
        assert int(sampler.timesteps[0]) <= 951, name  # t=999 has sigma ~2e4 and saturated every sample


def test_curriculum_orders_diffusion_training_and_resumes_exactly(tmp_path, digits):
    # Labels 0-9 as a toy difficulty: 30% of the rows (the lowest labels) are open at first, all by 50% of training.
    settings = dict(max_steps=8, save_strategy="steps", save_steps=3, curriculum="column", curriculum_column="label",
                    curriculum_pacing="linear", curriculum_start=0.3, curriculum_full_at=0.5)
    class SamplerEpochs(TrainerCallback):  # which epoch's order the sampler served at each step
        def __init__(self):
            self.seen = {}

        def on_step_end(self, args, state, control, **kwargs):
            self.seen[state.global_step] = trainer_under_test._curriculum_callback.sampler.epoch

    epochs = SamplerEpochs()
    full = trainer_under_test = DiffusionTrainer(tiny_unet(), config(tmp_path / "a", **settings), digits,
                                                 callbacks=[epochs])
    full.train()
    assert epochs.seen == {step: (step - 1) // 5 for step in range(1, 9)}  # 40 rows / batch 8: 5 steps an epoch
    logged = [h for h in full.state.log_history if "curriculum/open_share" in h]
    assert len(logged) == 8 and logged[0]["curriculum/open_share"] < logged[-1]["curriculum/open_share"] == 1.0
    assert logged[0]["curriculum/mean_difficulty"] < np.mean(digits["label"])  # easy digits first
    killed_args = config(tmp_path / "b", **settings)
    with pytest.raises(KeyboardInterrupt):
        DiffusionTrainer(tiny_unet(), killed_args, digits, callbacks=[_Crash(at=4)]).train()
    epochs.seen.clear()
    resumed = trainer_under_test = DiffusionTrainer(tiny_unet(seed=1), config(tmp_path / "b", **settings), digits,
                                                    callbacks=[epochs])
    resumed.train(resume_from_checkpoint=os.path.join(killed_args.output_dir, "checkpoint-3"))
    assert epochs.seen == {step: (step - 1) // 5 for step in range(4, 9)}
    assert losses(resumed) == losses(full)
    assert [h["curriculum/mean_difficulty"] for h in resumed.state.log_history if "curriculum/open_share" in h] \
        == [h["curriculum/mean_difficulty"] for h in logged]
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), full.model.parameters()))
    with pytest.raises(ConfigError, match="the `loss` scorer scores text"):
        DiffusionTrainer(tiny_unet(), config(tmp_path / "c", curriculum="loss"), digits)
