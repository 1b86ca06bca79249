"""Diffusion training with hftrain's `DiffusionTrainer` (one accelerate loop, hftrain's arguments and callbacks).

With no arguments it trains a small class-conditional UNet on the 8x8 handwritten digits that scikit-learn ships
(1,797 images, padded to 16x16; offline, about 10 minutes on a 2-core CPU), samples a grid at every evaluation and
scores it with a digit classifier trained on the same images. Point it at any image dataset to train for real;
every field of `DiffusionConfig`, `UNetArguments`, `ScriptArguments` and `ModelArguments` can be set in a YAML file
and overridden on the command line.

Usage:
    python recipes/diffusion.py
    python recipes/diffusion.py --config recipes/configs/diffusion_default.yaml --max_steps 500
    python -m hftrain.launch --config_file accelerate_configs/cpu_ddp.yaml recipes/diffusion.py
    python recipes/diffusion.py --dataset_name huggan/smithsonian_butterflies_subset --resolution 32 \
        --image_resize true --class_conditional false --unet_block_out_channels 64 128 128 --output_dir outputs/bfly

`--model_name_or_path` takes a saved UNet (or a pipeline folder with `unet/`) to fine-tune. The run resumes exactly
from the newest complete checkpoint in `output_dir` unless `--auto_resume false` is given, or from
`--resume_from_checkpoint PATH`. The same command gives the same weights on the same machine (the embedded UNet is
initialised from `--seed`).

The saved pipeline loads with plain diffusers: `DiffusionPipeline.from_pretrained(output_dir)` for an unconditional
UNet (a `DDPMPipeline`); a class- or text-conditional one is hftrain's `ImagePipeline`, shipped in the folder as a
diffusers custom pipeline, so add `trust_remote_code=True` (or load it with `hftrain.diffusion.ImagePipeline`).
"""

from __future__ import annotations

import json
import os
from typing import Optional

from hftrain import ModelArguments, ScriptArguments
from hftrain.diffusion import DiffusionConfig, DiffusionTrainer, UNetArguments
from hftrain.diffusion.builtin import DigitQuality, build_digits_unet, digits_dataset
from hftrain.errors import ConfigError, ModelLoadError
from hftrain.recipe_utils import (
    Headline,
    find_resume_checkpoint,
    finish_diffusion_run,
    is_main_process,
    load_dataset_splits,
    parse_recipe_args,
    run_main,
    start_run,
)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "diffusion_default.yaml")


def parse_args(argv: Optional[list[str]] = None):
    """Script, diffusion, UNet and model arguments; with no `--config`, the bundled default config is the base."""
    return parse_recipe_args(argv, (ScriptArguments, DiffusionConfig, UNetArguments, ModelArguments), DEFAULT_CONFIG)


def load_unet(model_args, unet_args, training_args):
    """The UNet of `model_name_or_path` (a UNet folder or a pipeline folder with `unet/`), or the embedded one."""
    if not model_args.model_name_or_path:
        num_classes = 10 if unet_args.class_conditional else None
        return build_digits_unet(
            unet_args.unet_block_out_channels,
            unet_args.unet_layers_per_block,
            unet_args.unet_attention,
            num_classes=num_classes,
            seed=training_args.seed,
        )
    from diffusers import UNet2DConditionModel, UNet2DModel

    path = model_args.model_name_or_path
    subfolder = "unet" if os.path.isfile(os.path.join(path, "model_index.json")) else None
    errors = []
    for cls in (UNet2DModel, UNet2DConditionModel):
        try:
            return cls.from_pretrained(path, subfolder=subfolder, revision=model_args.model_revision)
        except Exception as exc:  # the other class, a missing folder or no network: report both below
            errors.append(f"{cls.__name__}: {str(exc).splitlines()[0]}")
    raise ModelLoadError(f"model_name_or_path: cannot load a UNet from {path!r} ({'; '.join(errors)})")


def main(argv: Optional[list[str]] = None):
    # 1. Arguments: YAML, then command-line overrides. Bad keys, types or names fail here, writing nothing.
    script_args, training_args, unet_args, model_args = parse_args(argv)
    push_target = start_run(training_args)  # effective batch; hftrain pushes once, after its card is written
    bundled = not script_args.dataset_name
    if bundled and unet_args.class_conditional and training_args.class_column is None:
        training_args.class_column = "label"
    if bundled and (model_args.model_name_or_path is None) and training_args.resolution not in (None, 16):
        raise ConfigError(f"resolution: the bundled digits are 16x16, got {training_args.resolution}")

    # 2. Data: the bundled digits (all 1,797 for training, 100 of them for eval_loss), or any image dataset.
    train_dataset, eval_dataset = load_dataset_splits(
        script_args, bundled=lambda: (digits_dataset(), digits_dataset(max_rows=100)), seed=training_args.seed
    )
    if script_args.max_train_samples:
        train_dataset = train_dataset.select(range(min(script_args.max_train_samples, len(train_dataset))))
    if eval_dataset is not None and script_args.max_eval_samples:
        eval_dataset = eval_dataset.select(range(min(script_args.max_eval_samples, len(eval_dataset))))

    # 3. Model: the embedded UNet (initialised from the seed), or a saved one. The checkpoint to resume from is
    # checked against it now; the trainer checks data and model before any work starts.
    unet = load_unet(model_args, unet_args, training_args)
    checkpoint = find_resume_checkpoint(training_args, unet)

    # 4. Trainer: scores samples with the digit classifier on the bundled default.
    trainer = DiffusionTrainer(
        unet,
        training_args,
        train_dataset,
        eval_dataset=eval_dataset,
        quality_fn=DigitQuality() if bundled else None,
    )

    # 5. Train (resuming when a checkpoint exists).
    if checkpoint and is_main_process():
        print(f"[hftrain] resuming from {checkpoint}")
    train_metrics = trainer.train(resume_from_checkpoint=checkpoint)

    # 6. Save the pipeline (EMA weights) and a final evaluation grid with its quality score.
    output_dir = trainer.save_model()
    # The flow callback evaluates at the last step when eval_strategy is "steps"; reuse that instead of resampling.
    last = [h for h in trainer.state.log_history if "eval_runtime" in h and h["step"] == trainer.state.global_step]
    metrics = {k: v for k, v in last[-1].items() if k not in ("step", "epoch")} if last else trainer.evaluate()
    results = {**train_metrics, **metrics}
    if is_main_process():
        with open(os.path.join(output_dir, "all_results.json"), "w") as handle:
            json.dump(results, handle, indent=2)

    # 7. Card (the quality score first, the sample grid, the run it started from, the run history) and push.
    if is_main_process():
        finish_diffusion_run(
            trainer,
            output_dir,
            model_args=model_args,
            dataset=script_args.dataset_name or "digits",
            metrics=metrics,
            push_target=push_target,
            headline=Headline("digit quality score", "quality", key="eval_quality", percent=False),
        )

    # 8. Where everything is.
    if is_main_process():
        print_where(trainer, output_dir, metrics)
    return trainer, metrics


def print_where(trainer, output_dir: str, metrics: dict) -> None:
    """The quality score, how to load the pipeline, and where the last sample grid and the metrics are."""
    samples = os.path.join(output_dir, "samples", f"step-{trainer.state.global_step:06d}.png")
    if "eval_quality" in metrics:
        print(
            f"[hftrain] quality score: {metrics['eval_quality']:.3f} (confident share "
            f"{metrics['eval_confident_share']:.1%}, class entropy {metrics['eval_class_entropy']:.3f})"
        )
    print(
        f"[hftrain] pipeline saved to {os.path.abspath(output_dir)}; load it with {load_command(output_dir, trainer.args)}"
    )
    print(f"[hftrain] samples: {os.path.abspath(samples)}")
    print(f"[hftrain] metrics: {os.path.abspath(os.path.join(output_dir, 'all_results.json'))}")


def load_command(output_dir: str, args) -> str:
    """How plain diffusers loads the saved pipeline: a conditional one is a custom pipeline (its code ships in the
    folder), which diffusers only runs with `trust_remote_code=True`."""
    trust = ", trust_remote_code=True" if args.class_column or args.caption_column else ""
    return f"DiffusionPipeline.from_pretrained({os.path.abspath(output_dir)!r}{trust})"


if __name__ == "__main__":
    run_main(main)
