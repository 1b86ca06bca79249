"""Noise schedules and samplers by name, all built from diffusers' schedulers.

Training always uses a `DDPMScheduler` (it defines the forward process); evaluation samples with any sampler,
built from the training scheduler's betas so that every sampler works with every schedule.
"""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

__all__ = [
    "NOISE_SCHEDULES",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "KARRAS_SAMPLERS",
    "training_scheduler",
    "sampling_scheduler",
]

# Public name -> diffusers' `beta_schedule` value. "cosine" is the improved-DDPM schedule (squaredcos_cap_v2).
NOISE_SCHEDULES = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
    "squaredcos_cap_v2": "squaredcos_cap_v2",
    "sigmoid": "sigmoid",
}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SAMPLERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
}
# Samplers whose diffusers class accepts `use_karras_sigmas`.
KARRAS_SAMPLERS = ("euler", "dpmsolver++")


def training_scheduler(noise_schedule: str, prediction_type: str, num_train_timesteps: int) -> DDPMScheduler:
    """The `DDPMScheduler` that adds noise during training (and samples with `sampler: ddpm`)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=NOISE_SCHEDULES[noise_schedule],
        prediction_type=prediction_type,
    )


def sampling_scheduler(name: str, train_scheduler: DDPMScheduler, karras_sigmas: bool = False):
    """The sampler `name` for `train_scheduler`'s noise schedule and prediction type."""
    cls = SAMPLERS[name]
    kwargs = {}
    if name != "ddpm":
        # Passing the betas themselves lets samplers that lack a schedule by name (e.g. Euler has no
        # "sigmoid") sample from a model trained with it.
        kwargs["trained_betas"] = train_scheduler.betas.numpy().tolist()
        # "leading" spacing never starts at the last training timestep, where the cosine schedule's sigma is ~2e4:
        # starting there (the "linspace" default of Euler and DPM-Solver) saturated every sample in float32.
        kwargs.update(timestep_spacing="leading", steps_offset=1)
    if karras_sigmas:
        kwargs["use_karras_sigmas"] = True
    if name == "dpmsolver++":
        kwargs["algorithm_type"] = "dpmsolver++"
    return cls.from_config(train_scheduler.config, **kwargs)
