"""CTMScheduler and EDMHeunScheduler against the formulas, and against an exact model of Gaussian data whose
probability-flow ODE has a closed-form solution."""

import math

import numpy as np
import pytest
import torch

from soundctm import CTMScheduler, EDMHeunScheduler

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA, RHO = 0.002, 80.0, 0.5, 7.0


def karras(n):
    i = np.arange(n)
    return (SIGMA_MAX ** (1 / RHO) + i / (n - 1) * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO


# ------------------------------------------------------------------------------------------ exact Gaussian data
class GaussianData:
    """Data x0 ~ N(mu, sd²) per coordinate. Under the VE process z_t = x0 + t·ε the marginal is N(mu, sd² + t²),
    the denoiser is D(z, t) = mu + sd²/(sd² + t²)·(z − mu), and the probability-flow ODE moves a point
    from t to s as z_s = mu + (z_t − mu)·sqrt((sd² + s²)/(sd² + t²))."""

    def __init__(self, mu=0.7, sd=0.4, sigma_data=SIGMA_DATA):
        self.mu, self.sd, self.sigma_data = mu, sd, sigma_data

    def c(self, t):
        d = self.sigma_data
        return 1 / torch.sqrt(t**2 + d**2), d**2 / (t**2 + d**2), t * d / torch.sqrt(t**2 + d**2)

    def ode(self, z, t, s):
        return self.mu + (z - self.mu) * math.sqrt((self.sd**2 + s**2) / (self.sd**2 + t**2))

    def student_output(self, model_input, timestep, target_timestep):
        """The raw output F of a perfect CTM student: the one for which G(z, t, s) is the exact ODE jump."""
        t, s = torch.exp(4 * timestep.double()), torch.exp(4 * target_timestep.double())
        c_in, c_skip, c_out = self.c(t)
        z = model_input.double() / c_in
        G = self.mu + (z - self.mu) * torch.sqrt((self.sd**2 + s**2) / (self.sd**2 + t**2))
        g = (G - (s / t) * z) / (1 - s / t)  # invert G = (s/t) z + (1 - s/t) g
        return (g - c_skip * z) / c_out  # invert g = c_skip z + c_out F

    def teacher_output(self, model_input, timestep):
        """The raw output F of a perfect EDM teacher: c_skip z + c_out F is the exact denoiser."""
        t = torch.exp(4 * timestep.double())
        c_in, c_skip, c_out = self.c(t)
        z = model_input.double() / c_in
        D = self.mu + self.sd**2 / (self.sd**2 + t**2) * (z - self.mu)
        return (D - c_skip * z) / c_out


def run_ctm(model, scheduler, x_T, steps, gamma, generator=None):
    scheduler.set_timesteps(steps, gamma=gamma)
    z = x_T * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        F = model.student_output(scheduler.scale_model_input(z, t), t, scheduler.target_timesteps[i])
        z = scheduler.step(F, t, z, generator=generator).prev_sample
    return z


def run_heun(model, scheduler, x_T, steps):
    scheduler.set_timesteps(steps)
    z = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        F = model.teacher_output(scheduler.scale_model_input(z, t), t)
        z = scheduler.step(F, t, z).prev_sample
    return z


# ------------------------------------------------------------------------------------------ formulas
@pytest.mark.parametrize("steps", [1, 2, 5, 40])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_ctm_grid_and_jump_targets_follow_the_formulas(steps, gamma):
    sched = CTMScheduler()
    sched.set_timesteps(steps, gamma=gamma)
    t = karras(steps + 1)
    s = math.sqrt(1 - gamma**2) * (t[1:] - SIGMA_MIN) + SIGMA_MIN
    np.testing.assert_allclose(sched.sigmas.numpy(), t, rtol=1e-6)
    assert sched.sigmas[0] == pytest.approx(SIGMA_MAX) and sched.sigmas[-1] == pytest.approx(SIGMA_MIN)
    np.testing.assert_allclose(sched.target_sigmas.numpy(), s, rtol=1e-6)
    np.testing.assert_allclose(sched.timesteps.numpy(), np.log(t[:-1]) / 4, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sched.target_timesteps.numpy(), np.log(s) / 4, rtol=1e-6, atol=1e-7)
    assert len(sched.timesteps) == steps and sched.init_noise_sigma == pytest.approx(SIGMA_MAX)
    assert sched.target_sigmas[-1] == pytest.approx(SIGMA_MIN)  # the last jump lands on sigma_min, not 0


def test_ctm_step_is_denoise_then_jump_then_renoise():
    sched = CTMScheduler(sigma_data=0.5)
    sched.set_timesteps(3, gamma=0.5)
    z = torch.randn(2, 3, 5, dtype=torch.float64)
    F = torch.randn(2, 3, 5, dtype=torch.float64)
    t, s, t_next = (float(v) for v in (sched.sigmas[0], sched.target_sigmas[0], sched.sigmas[1]))
    np.testing.assert_allclose(
        sched.scale_model_input(z, sched.timesteps[0]).numpy(), (z / math.sqrt(t**2 + 0.25)).numpy(), rtol=1e-6
    )
    g = 0.25 / (t**2 + 0.25) * z + t * 0.5 / math.sqrt(t**2 + 0.25) * F
    G = s / t * z + (1 - s / t) * g
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = sched.step(F, sched.timesteps[0], z, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(out.pred_original_sample.numpy(), g.numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.prev_sample.numpy(), (G + math.sqrt(t_next**2 - s**2) * eps).numpy(), rtol=1e-5)


def test_gamma_zero_draws_no_noise(monkeypatch):
    import soundctm.scheduling_ctm as mod

    def forbidden(*args, **kwargs):
        raise AssertionError("γ = 0 must not draw noise")

    monkeypatch.setattr(mod, "randn_tensor", forbidden)
    sched = CTMScheduler()
    sched.set_timesteps(4, gamma=0.0)
    z = torch.randn(1, 2, 3)
    for t in sched.timesteps:
        z = sched.step(torch.randn(1, 2, 3), t, z).prev_sample


def test_last_jump_is_never_renoised():
    sched = CTMScheduler()
    sched.set_timesteps(2, gamma=1.0)
    z, F = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    sched.step(F, sched.timesteps[0], z, generator=torch.Generator().manual_seed(0))
    out = sched.step(F, sched.timesteps[1], z, generator=torch.Generator().manual_seed(0))
    t = sched.sigmas[1]
    G = SIGMA_MIN / t * z + (1 - SIGMA_MIN / t) * out.pred_original_sample
    torch.testing.assert_close(out.prev_sample, G)


def test_scheduler_config_round_trip(tmp_path):
    sched = CTMScheduler(sigma_min=0.003, sigma_max=50.0, sigma_data=0.25, rho=5.0, gamma=0.2)
    sched.save_pretrained(tmp_path)
    loaded = CTMScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731  (diffusers' bookkeeping aside)
    assert public(loaded.config) == public(sched.config)
    heun = EDMHeunScheduler(sigma_data=0.25)
    heun.save_pretrained(tmp_path / "heun")
    assert EDMHeunScheduler.from_pretrained(tmp_path / "heun").config.sigma_data == 0.25


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True])
def test_scheduler_rejects_bad_gamma(bad):
    with pytest.raises(ValueError, match="gamma"):
        CTMScheduler().set_timesteps(2, gamma=bad)


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (None, TypeError)])
def test_scheduler_rejects_bad_step_counts(bad, err):
    for sched in (CTMScheduler(), EDMHeunScheduler()):
        with pytest.raises(err, match="num_inference_steps"):
            sched.set_timesteps(bad)


# ------------------------------------------------------------------------------------------ exact model
def test_deterministic_sampling_of_the_exact_model_lands_on_the_ode_solution_for_every_step_count():
    data = GaussianData()
    x_T = torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solution = data.ode(x_T * SIGMA_MAX, SIGMA_MAX, SIGMA_MIN)
    samples = {n: run_ctm(data, CTMScheduler(), x_T, n, gamma=0.0) for n in (1, 2, 4, 16, 40)}
    for n, sample in samples.items():
        torch.testing.assert_close(sample, solution, rtol=1e-4, atol=1e-4, msg=f"{n}-step sample is off the ODE")
    torch.testing.assert_close(samples[1], samples[16], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_gamma_sampling_of_the_exact_model_has_the_right_final_marginal(gamma):
    data = GaussianData(mu=0.7, sd=0.4)
    n = 20000
    x_T = torch.randn(n, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = run_ctm(data, CTMScheduler(), x_T, 8, gamma=gamma, generator=torch.Generator().manual_seed(2)).flatten()
    var = data.sd**2 + SIGMA_MIN**2
    assert abs(float(z.mean()) - data.mu) < 4 * math.sqrt(var / n)
    assert abs(float(z.var()) / var - 1) < 4 * math.sqrt(2 / n)
    # The re-noising really is stochastic: the samples are not the ODE image of x_T.
    ode = data.ode(x_T.flatten() * SIGMA_MAX, SIGMA_MAX, SIGMA_MIN)
    assert float((z - ode).abs().mean()) > 0.05


def test_heun_scheduler_matches_a_direct_edm_sampler_and_the_ode():
    data = GaussianData()
    x_T = torch.randn(16, 2, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = run_heun(data, EDMHeunScheduler(), x_T, 40)

    # EDM's Algorithm 1 with S_churn = 0, written directly.
    t_steps = np.append(karras(40), 0.0)
    x = x_T * t_steps[0]

    def D(x, t):
        return data.mu + data.sd**2 / (data.sd**2 + t**2) * (x - data.mu)

    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        d_cur = (x - D(x, t_cur)) / t_cur  # Euler step.
        x_next = x + (t_next - t_cur) * d_cur
        if i < 39:  # Apply 2nd order correction.
            d_prime = (x_next - D(x_next, t_next)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)
    # Second order: doubling the steps divides the error against the exact ODE solution by about 4.
    exact = data.ode(x_T * SIGMA_MAX, SIGMA_MAX, 0.0)
    err40 = float((ours - exact).abs().max())
    err80 = float((run_heun(data, EDMHeunScheduler(), x_T, 80) - exact).abs().max())
    assert err40 < 0.02 and 3.5 < err40 / err80 < 4.5
    sched = EDMHeunScheduler()
    sched.set_timesteps(40)
    assert len(sched.timesteps) == 79  # 40 Euler steps, 39 corrections


def test_v_prediction_and_atan_conditioning_are_stable_audio_opens_preconditioning():
    """A Stable Audio Open teacher's ODE through our schedulers: c_in, c_noise and D = c_skip·z + c_out·F as
    diffusers' own Stable Audio scheduler computes them (v-prediction, c_noise = atan(σ)·2/π, σ_d 1)."""
    from diffusers import CosineDPMSolverMultistepScheduler

    stable_audio = CosineDPMSolverMultistepScheduler()
    kw = dict(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, prediction_type="v_prediction", noise_conditioning="atan")
    sigma = torch.tensor([0.3, 2.0, 80.0, 500.0])
    z, F = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(0)), torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(1))
    for ours in (CTMScheduler(**kw), EDMHeunScheduler(**{k: v for k, v in kw.items()})):
        s = sigma[:, None, None]
        torch.testing.assert_close(ours.sigma_to_timestep(sigma), stable_audio.precondition_noise(sigma))
        torch.testing.assert_close(ours.c_in(s) * z, stable_audio.precondition_inputs(z, s))
        torch.testing.assert_close(ours.c_skip(s) * z + ours.c_out(s) * F, stable_audio.precondition_outputs(z, F, s))
    ctm = CTMScheduler(**kw)
    ctm.set_timesteps(2)
    torch.testing.assert_close(ctm.timesteps, stable_audio.precondition_noise(ctm.sigmas[:-1]))
    with pytest.raises(ValueError, match="noise_conditioning"):
        CTMScheduler(noise_conditioning="log")
    with pytest.raises(ValueError, match="prediction_type"):
        EDMHeunScheduler(prediction_type="sample")
