"""The denoising objective: noise a batch at random timesteps, predict, weighted MSE. A pure function of its inputs
(every random draw comes from the generator passed in), so a run and its resume draw the same noise."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

__all__ = ["denoising_loss"]


def denoising_loss(
    unet: Any,
    clean: torch.Tensor,
    scheduler: Any,
    generator: torch.Generator,
    *,
    snr_gamma: Optional[float] = None,
    noise_offset: float = 0.0,
    **conditioning: Any,
) -> torch.Tensor:
    """Mean loss of `clean` images (in [-1, 1]) under `scheduler`'s forward process and prediction type.

    `conditioning` goes to the UNet (`class_labels`, `encoder_hidden_states`). Noise is drawn on the generator's
    device and moved, so a seed gives the same noise wherever the model runs."""
    device = generator.device
    noise = torch.randn(clean.shape, generator=generator, device=device).to(clean.device)
    if noise_offset:
        # Offset noise (Guttenberg 2023) lets the model change an image's mean brightness.
        offset = torch.randn((*clean.shape[:2], 1, 1), generator=generator, device=device).to(clean.device)
        noise += noise_offset * offset
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator, device=device
    ).to(clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = clean
    prediction = unet(noisy, timesteps, **conditioning).sample
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    # Min-SNR-gamma (Hang et al. 2023): weight each timestep by min(SNR, gamma), expressed for the target.
    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma)
    if prediction_type == "epsilon":
        weights = weights / snr
    elif prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_image * weights).mean()
