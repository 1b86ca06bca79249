"""`ImagePipeline`: a diffusers pipeline for pixel-space UNets, unconditional, class-conditional or text-conditional.

diffusers' `DDPMPipeline` covers the unconditional `UNet2DModel` with a DDPM/DDIM scheduler only (it never calls
`scale_model_input`, which Euler and DPM-Solver need) and has no pixel-space conditional counterpart, so
conditional runs are saved as this pipeline.

`save_pretrained` ships this file with the weights as a diffusers custom pipeline (`model_index.json` names
`["hftrain_image_pipeline", "ImagePipeline"]`), so plain diffusers loads the folder:
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`; with hftrain installed,
`ImagePipeline.from_pretrained(folder)` loads it with this class and runs no code from the folder. This module
therefore imports nothing but torch and diffusers.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

__all__ = ["CUSTOM_PIPELINE_FILE", "ImagePipeline", "call_unet"]

# The module name diffusers imports the shipped file as: specific, so it never shadows another custom pipeline.
CUSTOM_PIPELINE_FILE = "hftrain_image_pipeline"


def call_unet(unet, sample, timesteps, class_labels=None, encoder_hidden_states=None) -> torch.Tensor:
    """The UNet's prediction; `UNet2DConditionModel` takes `encoder_hidden_states` (None when it has no
    cross-attention), `UNet2DModel` does not."""
    kwargs = {} if class_labels is None else {"class_labels": class_labels}
    if "cross_attention_dim" in unet.config:
        kwargs["encoder_hidden_states"] = encoder_hidden_states
    return unet(sample, timesteps, **kwargs).sample


class ImagePipeline(DiffusionPipeline):
    """Samples images from `unet` with any diffusers `scheduler`; optional class labels or prompts."""

    # Without defaults in __init__ (pass None): diffusers only loads components that are required parameters;
    # ones with a default are handed over as raw config entries.
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, unet, scheduler, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    def save_pretrained(self, save_directory: str, **kwargs):
        """diffusers' save, plus this file and its name in `model_index.json`, so that
        `DiffusionPipeline.from_pretrained(save_directory, trust_remote_code=True)` finds the class."""
        super().save_pretrained(save_directory, **kwargs)
        shutil.copyfile(os.path.abspath(__file__), os.path.join(save_directory, f"{CUSTOM_PIPELINE_FILE}.py"))
        index = os.path.join(save_directory, "model_index.json")
        with open(index, encoding="utf-8") as handle:
            config = json.load(handle)
        config["_class_name"] = [CUSTOM_PIPELINE_FILE, type(self).__name__]
        with open(index, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """The folder's config, its custom-pipeline class reference read as this class's name: loading through this
        class (`ImagePipeline.from_pretrained`) uses this code, never the copy in the folder."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), (list, tuple)):
            config["_class_name"] = config["_class_name"][1]
        return loaded

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states for `prompts` (padded to the tokenizer's max length)."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: Optional[Union[torch.Tensor, Sequence[int]]] = None,
        prompt: Optional[Sequence[str]] = None,
        generator: Optional[torch.Generator] = None,
        num_inference_steps: int = 50,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Generate `batch_size` images (or one per class label / prompt). `output_type`: "pil", "np" or "pt"."""
        unet = self.unet
        device = unet.device
        kwargs = {}
        if class_labels is not None:
            kwargs["class_labels"] = torch.as_tensor(class_labels, device=device).long()
            batch_size = len(kwargs["class_labels"])
        if prompt is not None:
            kwargs["encoder_hidden_states"] = self.encode_prompt(prompt).to(device=device, dtype=unet.dtype)
            batch_size = len(prompt)
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, unet.config.in_channels, *size)
        # Noise is drawn on the generator's device so a seed gives the same images on CPU and GPU.
        gen_device = generator.device if generator is not None else torch.device("cpu")
        image = torch.randn(shape, generator=generator, device=gen_device).to(device=device, dtype=unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        image = image * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(image, t)
            output = call_unet(unet, model_input, t, **kwargs)
            image = self.scheduler.step(output, t, image, generator=generator).prev_sample
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
