"""Student jumps and latent ↔ waveform maps shared by the control and editing pipelines.

The student's anytime-to-anytime jump G_θ(z_t, c, ω, t, s) gives, from any point of the sampling path, a clean
estimate z_{t_N|t_n} = G_θ(z_{t_n}, c, ω, t_n, σ_min) in one network call. Loss-based guidance (Algorithm 3) and
data consistency (bandwidth extension) both work on that estimate, differentiably when gradients are enabled.

This file imports only torch so that diffusers' dynamic loader can copy it beside a pipeline file.
"""

import math

import torch


def ctm_jump(
    pipe,
    latents: torch.Tensor,
    sigma: float | torch.Tensor,
    target_sigma: float | torch.Tensor,
    prompt_embeds: torch.Tensor,
    guidance_scale: float,
    negative_prompt_embeds: torch.Tensor | None = None,
    nu: float = 1.0,
) -> torch.Tensor:
    """
    G_θ(z_t, c, ω, t, s) = (s/t)·z_t + (1 − s/t)·g_θ, g_θ = c_skip(t)·z_t + c_out(t)·F (float32, same shape as
    `latents`). With `negative_prompt_embeds` and ν ≠ 1, F is ν-combined: F_∅ + ν(F_c − F_∅) (Eq. 10).
    Differentiable with respect to `latents` when gradients are enabled.
    """
    scheduler, transformer = pipe.scheduler, pipe.transformer
    device = latents.device
    t = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    s = torch.as_tensor(target_sigma, dtype=torch.float32, device=device)
    do_nu = negative_prompt_embeds is not None and nu != 1.0
    z = torch.cat([latents, latents]) if do_nu else latents
    embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_nu else prompt_embeds
    batch = z.shape[0]
    F = transformer(
        (scheduler.c_in(t) * z).to(transformer.dtype),
        timestep=(torch.log(t) / 4).expand(batch),
        target_timestep=(torch.log(s) / 4).expand(batch),
        guidance_scale=torch.full((batch,), float(guidance_scale), device=device),
        encoder_hidden_states=embeds.to(transformer.dtype),
        return_dict=False,
    )[0].float()
    if do_nu:
        F_uncond, F_cond = F.chunk(2)
        F = F_uncond + nu * (F_cond - F_uncond)
    z = latents.float()
    g = scheduler.c_skip(t) * z + scheduler.c_out(t) * F
    return (s / t) * z + (1.0 - s / t) * g


def decode_waveform(pipe, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Standardised latents → `(batch, channels, num_samples)` float32 waveform, unclamped so gradients reach every sample."""
    vae = pipe.vae
    return vae.decode(vae.unstandardize(latents.to(vae.dtype))).sample[..., :num_samples].float()


def encode_waveform(pipe, audio: torch.Tensor) -> torch.Tensor:
    """`(batch, channels, samples)` waveform → standardised latents (the posterior mean), float32."""
    vae = pipe.vae
    posterior = vae.encode(audio.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return vae.standardize(posterior.mode()).float()


def normalized_gradient(grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """∇ / RMS(∇) per waveform: the guidance step ρ_t = ρ / ‖∇‖ (DITTO's gradient-norm step size), in RMS units."""
    rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(eps)
    return grad / rms.view(-1, *([1] * (grad.ndim - 1)))


def step_end_correction(initial_latents: torch.Tensor, correction, user_callback=None, user_keys=()):
    """
    A `callback_on_step_end` for the base sampling loop that replaces the latents after every jump n by
    `correction(pipe, n, z_{t_n}, callback_kwargs) -> latents`, where z_{t_n} is the latent the jump started from (the
    base loop only passes the one it lands on), then calls the user's own callback with the keys it asked for.
    `initial_latents` is the unit noise the loop starts from (z_{t_0} = initial_latents · init_noise_sigma).
    """
    state = {"z": None}

    def callback(pipe, i, t, callback_kwargs):
        if state["z"] is None:
            state["z"] = initial_latents * pipe.scheduler.init_noise_sigma  # as the base loop scales it
        callback_kwargs["latents"] = correction(pipe, i, state["z"], callback_kwargs)
        outputs = {"latents": callback_kwargs["latents"]}
        if user_callback is not None:
            outputs.update(user_callback(pipe, i, t, {k: callback_kwargs[k] for k in user_keys}) or {})
        state["z"] = outputs["latents"]
        return outputs

    return callback


def karras_sigma(scheduler, fraction: float) -> float:
    """
    The noise level a `fraction` of the way along the scheduler's Karras ramp, measured from σ_min (0) to σ_max (1):
    (σ_max^{1/ρ} + (1 − fraction)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
    """
    config = scheduler.config
    inv_rho = 1.0 / config.rho
    max_inv, min_inv = config.sigma_max**inv_rho, config.sigma_min**inv_rho
    return float((max_inv + (1.0 - fraction) * (min_inv - max_inv)) ** config.rho)


def check_number(value, name: str, low: float, high: float, low_open: bool = True, high_open: bool = False) -> float:
    """`value` as a float in the interval; a ValueError naming `name` and the interval otherwise."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) or _is_numpy_number(value)
    ok = ok and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be a number in {interval}, got {value!r}")
    return float(value)


def _is_numpy_number(value) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iuf" and value.ndim == 0
