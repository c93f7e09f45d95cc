"""The SoundCTM distillation objective (Saito et al., ICLR 2025: Sections 3.1-3.2, Algorithm 2, Appendix D) as
functions of tensors. Each is tested against a direct computation in `tests/test_distill_losses.py`.

Notation (the paper's): z_t = z_0 + t·ε on the variance-exploding path; the student's raw output F gives the EDM
denoiser g = c_skip(t)·z_t + c_out(t)·F (Appendix D) and the CTM jump

    G_θ(z_t, c, ω, t, s) = (s/t)·z_t + (1 − s/t)·g_θ(z_t, c, ω, t, s)                       (Eq. 6)

trained so that G_θ(z_t, t, s) ≈ G_sg(θ)(Solver(z_t, c, ω, t, u; φ), u, s) (Eq. 4), with the distance d_teacher of
Eq. (5) measured by the teacher network φ at time s, plus λ_DSM times the denoising loss of Eq. (8) (Eq. 9).
"""

import math

import torch


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with `ndim` dimensions in all."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


# ---------------------------------------------------------------------------------------------- (t, u, s) sampling
HEUN_STEP_STRATEGIES = ("weighted", "uniform")


def sample_num_heun_steps(max_heun_steps: int, generator: torch.Generator, strategy: str = "weighted") -> int:
    """k ∈ {1, ..., max_heun_steps}: the number of teacher Heun steps t → u, one k per batch. `strategy` is the
    authors' `heun_step_strategy`: "weighted", P(k) ∝ k (their setting; at most N − 1 = 39 steps, Appendix D), or
    "uniform"."""
    if max_heun_steps < 1:
        raise ValueError(f"max_heun_steps must be >= 1, got {max_heun_steps}")
    if strategy not in HEUN_STEP_STRATEGIES:
        raise ValueError(f"heun_step_strategy must be one of {', '.join(HEUN_STEP_STRATEGIES)}; got {strategy!r}")
    weights = torch.arange(1, max_heun_steps + 1, dtype=torch.float64)
    if strategy == "uniform":
        weights = torch.ones_like(weights)
    return int(torch.multinomial(weights, 1, generator=generator)) + 1


def sample_ctm_indices(batch_size: int, num_timesteps: int, k: int, generator: torch.Generator):
    """
    Grid indices (n, u, s) on the N-point Karras grid t_0 = σ_max > ... > t_{N-1} = σ_min for one batch with k Heun
    steps: n ~ U{0, ..., N−1−k} (t = t_n), u = n + k, s ~ U{u, ..., N−1}, each drawn per sample ("we choose t and s
    from the N-discretized timesteps", Appendix D).

    Returns three `LongTensor`s of shape (batch_size,).
    """
    if not 1 <= k <= num_timesteps - 1:
        raise ValueError(f"k must be in [1, {num_timesteps - 1}] for a grid of {num_timesteps} points, got {k}")
    n = torch.randint(0, num_timesteps - k, (batch_size,), generator=generator)
    u = n + k
    s = u + (torch.rand(batch_size, generator=generator, dtype=torch.float64) * (num_timesteps - u)).long()
    return n, u, s.clamp(max=num_timesteps - 1)


def force_long_jumps(n: torch.Tensor, u: torch.Tensor, s: torch.Tensor, num_timesteps: int, fraction: float, generator: torch.Generator):
    """
    Turns each sample, with probability `fraction`, into the whole jump t_0 = σ_max → t_{N−1} = σ_min that a 1-step
    draft makes: n = 0 and u = s = N − 1, so that its target is the teacher's own solve to the grid's end, not the
    target network's jump from u. Only a solve whose end point is known per sample (solved teacher trajectories)
    can serve it: the online solve shares one k across the batch.

    Returns the new `(n, u, s)`.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    long = torch.rand(n.shape, generator=generator) < fraction
    first, last = torch.zeros_like(n), torch.full_like(n, num_timesteps - 1)
    return torch.where(long, first, n), torch.where(long, last, u), torch.where(long, last, s)


def drop_captions(captions: list[str], p_uncond: float, generator: torch.Generator) -> list[str]:
    """Algorithm 2, line 4: each caption becomes the empty prompt "" with probability p_uncond, so that one network
    learns both the conditional and the unconditional student that ν-sampling (Eq. 10) combines."""
    drop = (torch.rand(len(captions), generator=generator) < p_uncond).tolist()
    return ["" if dropped else caption for dropped, caption in zip(drop, captions)]


def sample_omega(batch_size: int, omega_min: float, omega_max: float, generator: torch.Generator) -> torch.Tensor:
    """ω ~ U[ω_min, ω_max] per sample (Section 3.2)."""
    return omega_min + (omega_max - omega_min) * torch.rand(batch_size, generator=generator)


# ---------------------------------------------------------------------------------------------- teacher solve
@torch.no_grad()
def heun_solve_cfg(teacher, z: torch.Tensor, sigmas: torch.Tensor, n: torch.Tensor, k: int, cond, uncond, omega, cond_mask=None, uncond_mask=None):
    """
    Solver(z_t, c, ω, t, u; φ): k Heun steps (EDM Algorithm 1, without churn) of the classifier-free-guided PF ODE
    dz/dσ = (z − D_ω(z; σ)) / σ, D_ω = D(∅) + ω·(D(c) − D(∅)), along the grid `sigmas` from sigmas[n] to
    sigmas[n + k]. Every sample starts at its own index n (the sigmas are per sample, the step count k is shared).
    Guidance combines the denoisers at every evaluation, as the authors' `heun_solver_cfg` does; each evaluation is
    one teacher call on a batch of 2B (conditional and unconditional halves).

    Args:
        teacher (`DistillationTeacher`): provides `guided_denoise`.
        z (`torch.Tensor` of shape `(B, C, T)`): z_t.
        sigmas (`torch.Tensor` of shape `(N,)`): the training grid, decreasing, ending at σ_min > 0.
        n (`torch.LongTensor` of shape `(B,)`): start indices; n + k must be on the grid.
        cond, uncond (`torch.Tensor` of shape `(B, tokens, D)`): text and empty-prompt embeddings.
        cond_mask, uncond_mask (`torch.Tensor` of shape `(B, tokens)`, *optional*): their attention masks.
        omega (`torch.Tensor` of shape `(B,)`): CFG scales.
    Returns:
        z_u, float32, shape `(B, C, T)`.
    """
    z = z.float()
    for j in range(k):
        t_cur, t_next = sigmas[n + j], sigmas[n + j + 1]
        dt = append_dims(t_next - t_cur, z.ndim)
        # Euler step.
        d_cur = (z - teacher.guided_denoise(z, t_cur, cond, uncond, omega, cond_mask, uncond_mask)) / append_dims(t_cur, z.ndim)
        z_next = z + dt * d_cur
        # Apply 2nd order correction (t_next >= σ_min > 0 on the training grid, so it always applies).
        d_next = (z_next - teacher.guided_denoise(z_next, t_next, cond, uncond, omega, cond_mask, uncond_mask)) / append_dims(t_next, z.ndim)
        z = z + dt * (0.5 * d_cur + 0.5 * d_next)
    return z


# ---------------------------------------------------------------------------------------------- CTM jump
def student_output(model, scheduler, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor, omega, embeds, mask=None) -> torch.Tensor:
    """The student's raw output F = NN_θ(c_in(t)·z_t, c_noise(t), c_noise(s), ω, c), as float32; `mask` is the
    `(B, tokens)` attention mask of per-token text states (None: every token)."""
    dtype = getattr(model, "dtype", z.dtype)
    return model(
        hidden_states=(append_dims(scheduler.c_in(t), z.ndim) * z).to(dtype),
        timestep=scheduler.sigma_to_timestep(t),
        target_timestep=scheduler.sigma_to_timestep(s),
        guidance_scale=omega,
        encoder_hidden_states=embeds,
        encoder_attention_mask=mask,
    ).sample.float()


def ctm_jump(scheduler, F: torch.Tensor, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor):
    """
    Returns `(G, g)`: the jump G(z_t, t, s) of Eq. (6) and the denoiser g = c_skip(t)·z_t + c_out(t)·F.
    With s = t, G = z_t and g is the DSM prediction of Eq. (8).
    """
    t_, s_ = append_dims(t, z.ndim), append_dims(s, z.ndim)
    g = scheduler.c_skip(t_) * z + scheduler.c_out(t_) * F
    G = (s_ / t_) * z + (1.0 - s_ / t_) * g
    return G, g


# ---------------------------------------------------------------------------------------------- CTM distance
def normalize_channels(h: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalises every position's channel vector (the last axis), as LPIPS does (Zhang et al. 2018, Sec. 3)."""
    return h / (torch.sqrt(torch.sum(h * h, dim=-1, keepdim=True)) + eps)


def d_teacher(features_est, features_target) -> torch.Tensor:
    """
    d_teacher of Eq. (5): Σ_m ‖TN_m(z_target) − TN_m(z_est)‖², TN_m = the teacher's m-th block output normalised over
    channels. Each block contributes the squared difference summed over channels and averaged over positions (LPIPS'
    spatial average: Eq. 5 divided by the number of positions, the same for every block of a DiT).

    Args:
        features_est, features_target: sequences of `(B, positions, channels)` tensors, one per block.
    Returns:
        `(B,)` per-sample distances.
    """
    if len(features_est) != len(features_target) or not len(features_est):
        raise ValueError("d_teacher needs the same, non-zero number of blocks for the estimate and the target")
    total = 0.0
    for h_est, h_target in zip(features_est, features_target):
        diff = normalize_channels(h_est.float()) - normalize_channels(h_target.float())
        total = total + diff.pow(2).sum(dim=-1).mean(dim=-1)
    return total


def l2_distance(z_est: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """The `l2` alternative to d_teacher at time s (Table 1's "l2 at s"): per-sample mean squared error, `(B,)`."""
    return (z_est.float() - z_target.float()).pow(2).flatten(1).mean(dim=1)


# ---------------------------------------------------------------------------------------------- DSM
def karras_ramp_sigmas(xi: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """σ at positions `xi` ∈ [0, 1] of the Karras ramp (Karras et al. 2022, Eq. 5): σ_max at 0, σ_min at 1."""
    return (sigma_max ** (1 / rho) + xi * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def sample_dsm_sigmas(
    batch_size: int,
    generator: torch.Generator,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    xi_max: float = 0.7,
) -> torch.Tensor:
    """
    σ for the DSM loss (Appendix D): the first ⌊B/2⌋ samples ln σ ~ N(p_mean, p_std²); the rest
    σ = (σ_max^{1/ρ} + ξ·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ with ξ ~ U[0, xi_max] (the high-noise end of the Karras ramp).
    """
    half = batch_size // 2
    lognormal = torch.exp(p_mean + p_std * torch.randn(half, generator=generator))
    xi = torch.rand(batch_size - half, generator=generator) * xi_max
    return torch.cat([lognormal, karras_ramp_sigmas(xi, sigma_min, sigma_max, rho)])


def dsm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ·σ_d)², EDM's weighting (Appendix D)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def dsm_loss(g: torch.Tensor, z0: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Eq. (8) with EDM's weighting: λ(σ)·mean‖z_0 − g_θ(z_σ, c, ω, σ, σ)‖² per sample, `(B,)`."""
    return dsm_weight(sigma, sigma_data) * (g.float() - z0.float()).pow(2).flatten(1).mean(dim=1)


# ---------------------------------------------------------------------------------------------- λ_DSM
def conv1x1_weight_grad(grad_output: torch.Tensor, layer_input: torch.Tensor) -> torch.Tensor:
    """
    ∂L/∂W of a bias-free 1×1 convolution y = W·x (+ x) from its input x `(B, C_in, T)` and ∂L/∂y `(B, C_out, T)`:
    Σ_{b,τ} ∂L/∂y[b, :, τ] ⊗ x[b, :, τ], shaped `(C_out, C_in, 1)` like the weight. Computed from activations so that
    it holds whatever wraps the model (DDP, FSDP and DeepSpeed shard or flatten the parameters themselves).
    """
    return torch.einsum("bot,bit->oi", grad_output.float(), layer_input.float())[..., None]


def last_layer_weight_grad(layer: torch.nn.Module, grad_output: torch.Tensor, layer_input: torch.Tensor) -> torch.Tensor:
    """∂L/∂W of the student's last layer θ_L from its input and ∂L/∂(its output): the DiT's bias-free 1×1 `Conv1d`
    (`conv1x1_weight_grad`) or a UNet's `conv_out` (`Conv2d`, through `torch.nn.grad.conv2d_weight`)."""
    if isinstance(layer, torch.nn.Conv2d):
        return torch.nn.grad.conv2d_weight(
            layer_input.float(), layer.weight.shape, grad_output.float(), layer.stride, layer.padding, layer.dilation, layer.groups
        )
    return conv1x1_weight_grad(grad_output, layer_input)


def adaptive_dsm_weight(grad_ctm: torch.Tensor, grad_dsm: torch.Tensor, max_weight: float = 1e3) -> torch.Tensor:
    """λ_DSM = ‖∇_{θ_L} L_CTM‖ / (‖∇_{θ_L} L_DSM‖ + 1e-8), clamped to [0, max_weight] (Appendix D; CTM, VQGAN's
    adaptive weight), without gradient."""
    weight = torch.linalg.vector_norm(grad_ctm.float()) / (torch.linalg.vector_norm(grad_dsm.float()) + 1e-8)
    return weight.clamp(0.0, max_weight).detach()


def expected_heun_steps(max_heun_steps: int, strategy: str = "weighted") -> float:
    """E[k] on 1..K: (2K + 1) / 3 under P(k) ∝ k ("weighted"), (K + 1) / 2 under "uniform"."""
    if max_heun_steps < 1:
        return math.nan
    return (2 * max_heun_steps + 1) / 3 if strategy == "weighted" else (max_heun_steps + 1) / 2
