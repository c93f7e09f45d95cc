"""The distillation objective (distill/losses.py and the step of distill/train.py), each piece against a direct
computation: (t, u, s) and k sampling, the CFG-guided teacher Heun solve, the CTM jump, d_teacher (Eq. 5), the DSM
loss and its σ sampling, caption dropout, λ_DSM, and the gradients of Eq. (9)."""

import argparse
import copy
import os
import sys

import numpy as np
import pytest
import torch
from tiny_models import PROMPTS, tiny_pipeline

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.losses import (  # noqa: E402
    adaptive_dsm_weight,
    conv1x1_weight_grad,
    ctm_jump,
    d_teacher,
    drop_captions,
    dsm_loss,
    force_long_jumps,
    heun_solve_cfg,
    l2_distance,
    sample_ctm_indices,
    sample_dsm_sigmas,
    sample_num_heun_steps,
    student_output,
)
from distill.teacher import SoundCTMTeacher  # noqa: E402
from soundctm import CTMScheduler  # noqa: E402


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def teacher_pipe():
    pipe = tiny_pipeline(student=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def scheduler():
    return CTMScheduler()


@pytest.fixture(scope="module")
def teacher(teacher_pipe, scheduler):
    return SoundCTMTeacher(teacher_pipe.transformer, scheduler)


def embeds(pipe, prompts):
    return pipe.encode_text(list(prompts), torch.device("cpu"))


# ------------------------------------------------------------------------------------------ sampling
def test_heun_step_count_is_drawn_with_probability_proportional_to_k():
    g = gen()
    draws = np.array([sample_num_heun_steps(9, g) for _ in range(20000)])
    assert set(draws) == set(range(1, 10))
    freq = np.bincount(draws, minlength=10)[1:] / len(draws)
    np.testing.assert_allclose(freq, np.arange(1, 10) / 45, atol=0.01)


def test_t_u_s_indices_follow_the_grid_rules():
    N, k = 10, 3
    n, u, s = sample_ctm_indices(30000, N, k, gen())
    assert torch.equal(u, n + k)
    assert n.min() == 0 and n.max() == N - 1 - k  # n ~ U{0..N-1-k}
    assert bool((s >= u).all()) and bool((s <= N - 1).all())
    np.testing.assert_allclose(np.bincount(n.numpy()) / len(n), 1 / (N - k), atol=0.01)
    s_given_u3 = s[u == 3].numpy()  # s ~ U{u..N-1}
    np.testing.assert_allclose(np.bincount(s_given_u3, minlength=N)[3:] / len(s_given_u3), 1 / 7, atol=0.02)
    with pytest.raises(ValueError, match="k must be in"):
        sample_ctm_indices(4, N, N, gen())


def test_long_jumps_replace_a_share_of_the_samples_by_the_whole_jump_to_the_grid_end():
    N, k = 10, 3
    n, u, s = sample_ctm_indices(20000, N, k, gen())
    assert all(torch.equal(a, b) for a, b in zip(force_long_jumps(n, u, s, N, 0.0, gen(1)), (n, u, s)))
    first, last = torch.zeros_like(n), torch.full_like(n, N - 1)
    assert all(torch.equal(a, b) for a, b in zip(force_long_jumps(n, u, s, N, 1.0, gen(1)), (first, last, last)))
    n2, u2, s2 = force_long_jumps(n, u, s, N, 0.3, gen(1))
    long = (n2 == 0) & (u2 == N - 1) & (s2 == N - 1)
    assert abs(float(long.double().mean()) - 0.3) < 0.015  # (n, u) = (0, N-1) is impossible with k = 3: all forced
    kept = ~long
    assert torch.equal(n2[kept], n[kept]) and torch.equal(u2[kept], u[kept]) and torch.equal(s2[kept], s[kept])
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        force_long_jumps(n, u, s, N, 1.5, gen())


def test_captions_are_dropped_to_the_empty_prompt_with_probability_p_uncond():
    captions = [f"caption {i}" for i in range(4000)]
    assert drop_captions(captions, 0.0, gen()) == captions
    assert drop_captions(captions, 1.0, gen()) == [""] * len(captions)
    dropped = drop_captions(captions, 0.25, gen())
    assert all(d in ("", c) for d, c in zip(dropped, captions))
    assert abs(dropped.count("") / len(captions) - 0.25) < 0.03


def test_dsm_sigmas_are_half_lognormal_half_high_noise_karras():
    sigmas = sample_dsm_sigmas(20001, gen(), 0.002, 80.0, 7.0, p_mean=-1.2, p_std=1.2, xi_max=0.7)
    lognormal, karras = sigmas[:10000].log(), sigmas[10000:]
    assert abs(lognormal.mean() + 1.2) < 0.05 and abs(lognormal.std() - 1.2) < 0.05
    xi = (karras ** (1 / 7) - 80 ** (1 / 7)) / (0.002 ** (1 / 7) - 80 ** (1 / 7))  # invert the Karras ramp
    assert xi.min() >= 0 and xi.max() <= 0.7 + 1e-5
    np.testing.assert_allclose(np.quantile(xi.numpy(), [0.25, 0.5, 0.75]), [0.175, 0.35, 0.525], atol=0.02)


# ------------------------------------------------------------------------------------------ teacher solve
def test_guided_denoise_is_cfg_of_two_separate_teacher_calls(teacher, teacher_pipe):
    z = torch.randn(3, 4, 16, generator=gen(1))
    sigma = torch.tensor([0.3, 2.0, 40.0])
    cond, uncond = embeds(teacher_pipe, PROMPTS[:3]), embeds(teacher_pipe, [""] * 3)
    omega = torch.tensor([1.0, 3.0, 7.5])
    d_c, d_u = teacher.denoise(z, sigma, cond), teacher.denoise(z, sigma, uncond)
    expected = d_u + omega[:, None, None] * (d_c - d_u)
    torch.testing.assert_close(teacher.guided_denoise(z, sigma, cond, uncond, omega), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teacher.guided_denoise(z, sigma, cond, uncond, torch.ones(3))[0], d_c[0], rtol=1e-5, atol=1e-5)
    chunked = SoundCTMTeacher(teacher.transformer, teacher.scheduler, max_batch_size=4)  # 6 rows in calls of 4 + 2
    torch.testing.assert_close(chunked.guided_denoise(z, sigma, cond, uncond, omega), expected, rtol=1e-5, atol=1e-5)


def test_heun_solve_matches_a_per_sample_loop(teacher, teacher_pipe, scheduler):
    sigmas = torch.from_numpy(scheduler.karras_sigmas(12)).float()
    z = torch.randn(3, 4, 16, generator=gen(2)) * 10
    n, k = torch.tensor([0, 4, 7]), 4
    cond, uncond = embeds(teacher_pipe, PROMPTS[:3]), embeds(teacher_pipe, [""] * 3)
    omega = torch.tensor([2.0, 5.0, 9.0])
    result = heun_solve_cfg(teacher, z, sigmas, n, k, cond, uncond, omega)

    def guided_D(x, t, b):  # one sample, conditional and unconditional calls made separately
        t = torch.tensor([float(t)])
        d_c = teacher.denoise(x[None], t, cond[b : b + 1])[0]
        d_u = teacher.denoise(x[None], t, uncond[b : b + 1])[0]
        return d_u + float(omega[b]) * (d_c - d_u)

    for b in range(3):
        x = z[b]
        for i in range(int(n[b]), int(n[b]) + k):
            t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
            d = (x - guided_D(x, t_cur, b)) / t_cur
            x_euler = x + (t_next - t_cur) * d
            d2 = (x_euler - guided_D(x_euler, t_next, b)) / t_next
            x = x + (t_next - t_cur) * (d + d2) / 2
        torch.testing.assert_close(result[b], x, rtol=1e-4, atol=1e-4)


def test_a_solve_over_the_whole_grid_is_the_pipelines_heun_teacher(teacher, teacher_pipe, scheduler):
    """Training's Solver and the teacher pipeline's EDM Heun sampler are the same ODE solve: over the whole N-point
    grid they differ only by the pipeline's last Euler step from σ_min = 0.002 to 0."""
    N, omega = 12, 4.0
    noise = torch.randn(2, 4, 16, generator=gen(3))
    reference = teacher_pipe(
        PROMPTS[:2], num_inference_steps=N, guidance_scale=omega, latents=noise, output_type="latent"
    ).audios
    sigmas = torch.from_numpy(scheduler.karras_sigmas(N)).float()
    cond, uncond = embeds(teacher_pipe, PROMPTS[:2]), embeds(teacher_pipe, [""] * 2)
    solved = heun_solve_cfg(teacher, noise * 80.0, sigmas, torch.zeros(2, dtype=torch.long), N - 1, cond, uncond, torch.full((2,), omega))
    torch.testing.assert_close(solved, reference, rtol=0, atol=0.02)
    assert (solved - reference).abs().max() < 0.01 * reference.abs().max()


# ------------------------------------------------------------------------------------------ CTM jump
def test_ctm_jump_is_eq6_and_the_schedulers_deterministic_step(scheduler):
    z, F = torch.randn(2, 4, 16, generator=gen(4)) * 5, torch.randn(2, 4, 16, generator=gen(5))
    inference = CTMScheduler()
    inference.set_timesteps(4, gamma=0.0)
    for n in range(4):
        t, s = inference.sigmas[n], inference.target_sigmas[n]
        expected = inference.step(F, inference.timesteps[n], z).prev_sample
        G, g = ctm_jump(scheduler, F, z, t.expand(2), s.expand(2))
        torch.testing.assert_close(G, expected)
        d = 0.5
        torch.testing.assert_close(g, d**2 / (t**2 + d**2) * z + t * d / (t**2 + d**2).sqrt() * F)
    t = torch.tensor([3.0, 0.1])
    G, _ = ctm_jump(scheduler, F, z, t, t)
    torch.testing.assert_close(G, z)  # G(z, t, t) = z


def test_student_output_is_the_network_on_preconditioned_input(teacher_pipe, scheduler):
    from distill.train import make_student

    student = make_student(teacher_pipe.transformer, 16)
    z, cond = torch.randn(2, 4, 16, generator=gen(6)), embeds(teacher_pipe, PROMPTS[:2])
    t, s, omega = torch.tensor([10.0, 0.5]), torch.tensor([1.0, 0.002]), torch.tensor([3.0, 6.0])
    expected = student(
        hidden_states=z / (t**2 + 0.25).sqrt()[:, None, None],
        timestep=t.log() / 4,
        target_timestep=s.log() / 4,
        guidance_scale=omega,
        encoder_hidden_states=cond,
    ).sample
    torch.testing.assert_close(student_output(student, scheduler, z, t, s, omega, cond), expected)
    # Initialised from the teacher: the same weights, the student adds no parameters.
    for (name, p), (name_t, q) in zip(student.named_parameters(), teacher_pipe.transformer.named_parameters()):
        assert name == name_t and torch.equal(p, q)


# ------------------------------------------------------------------------------------------ d_teacher
def test_teacher_features_are_the_chained_block_outputs_of_one_pass(teacher, teacher_pipe):
    model = teacher_pipe.transformer
    z, sigma, cond = torch.randn(2, 4, 16, generator=gen(7)), torch.tensor([0.7, 9.0]), embeds(teacher_pipe, PROMPTS[:2])
    features = teacher.block_features(z, sigma, cond)
    assert len(features) == model.config.num_layers
    with torch.no_grad():
        h = z / (sigma**2 + 0.25).sqrt()[:, None, None]
        emb = model.time_embedding(model.time_proj(sigma.log() / 4))
        x = model.proj_in((model.preprocess_conv(h) + h).transpose(1, 2))
        x = torch.cat([emb[:, None], x], dim=1)
        context, freqs = model.context_embedding(cond), model._rotary_freqs(x.shape[1], "cpu")
        for block, feature in zip(model.transformer_blocks, features):
            x = block(x, context, None, freqs)  # each block takes the previous block's output
            torch.testing.assert_close(feature, x, rtol=1e-5, atol=1e-5)


def direct_d_teacher(features_a, features_b):
    out = np.zeros(features_a[0].shape[0])
    for fa, fb in zip(features_a, features_b):
        fa, fb = fa.double().numpy(), fb.double().numpy()
        for b in range(fa.shape[0]):
            per_position = [
                np.sum((fa[b, p] / np.linalg.norm(fa[b, p]) - fb[b, p] / np.linalg.norm(fb[b, p])) ** 2)
                for p in range(fa.shape[1])
            ]
            out[b] += np.mean(per_position)
    return out


def test_d_teacher_is_eq5_over_channel_normalised_block_features():
    a = [torch.randn(2, 5, 8, generator=gen(i)) for i in range(3)]
    b = [torch.randn(2, 5, 8, generator=gen(10 + i)) for i in range(3)]
    np.testing.assert_allclose(d_teacher(a, b).numpy(), direct_d_teacher(a, b), rtol=1e-5)
    assert torch.all(d_teacher(a, a) < 1e-10)
    # Normalised over channels: rescaling a position's channel vector changes nothing, rescaling a channel does.
    per_position = [f * torch.rand(2, 5, 1, generator=gen(20)).add(0.1) for f in a]
    torch.testing.assert_close(d_teacher(per_position, b), d_teacher(a, b))
    per_channel = [f * torch.linspace(0.1, 3.0, 8) for f in a]
    assert not torch.allclose(d_teacher(per_channel, b), d_teacher(a, b))


def test_l2_distance_is_the_mean_squared_error():
    a, b = torch.randn(3, 4, 16, generator=gen(8)), torch.randn(3, 4, 16, generator=gen(9))
    torch.testing.assert_close(l2_distance(a, b), ((a - b) ** 2).mean(dim=(1, 2)))


# ------------------------------------------------------------------------------------------ DSM and λ_DSM
def test_dsm_loss_is_eq8_with_edm_weighting():
    g, z0 = torch.randn(3, 4, 16, generator=gen(11)), torch.randn(3, 4, 16, generator=gen(12))
    sigma, d = torch.tensor([0.01, 0.5, 30.0]), 0.5
    expected = [((s**2 + d**2) / (s * d) ** 2) * ((g[i] - z0[i]) ** 2).mean() for i, s in enumerate(sigma)]
    torch.testing.assert_close(dsm_loss(g, z0, sigma, d), torch.stack(expected))


def test_last_layer_gradient_from_activations_equals_autograd(teacher_pipe, scheduler):
    from distill.train import LayerInput, make_student

    student = make_student(teacher_pipe.transformer, 16)
    captured = LayerInput(student.postprocess_conv)
    z, cond = torch.randn(2, 4, 16, generator=gen(13)), embeds(teacher_pipe, PROMPTS[:2])
    F = student_output(student, scheduler, z, torch.tensor([3.0, 0.3]), torch.tensor([1.0, 0.1]), torch.tensor([2.0, 8.0]), cond)
    loss = (torch.sin(F) * torch.randn(F.shape, generator=gen(14))).sum()
    expected = torch.autograd.grad(loss, student.postprocess_conv.weight, retain_graph=True)[0]
    torch.testing.assert_close(conv1x1_weight_grad(torch.autograd.grad(loss, F)[0], captured.value), expected)


def test_adaptive_weight_is_the_clamped_ratio_of_gradient_norms():
    a, b = torch.randn(4, 4, 1, generator=gen(15)), torch.randn(4, 4, 1, generator=gen(16))
    torch.testing.assert_close(adaptive_dsm_weight(a, b), a.norm() / (b.norm() + 1e-8))
    assert adaptive_dsm_weight(a * 1e6, b) == 1e3
    assert adaptive_dsm_weight(a, b, max_weight=0.5) == min(0.5, float(a.norm() / b.norm()))


# ------------------------------------------------------------------------------------------ one training step
def step_args(**overrides):
    args = dict(
        p_uncond=0.25,
        max_heun_steps=None,
        heun_step_strategy="weighted",
        omega_min=1.0,
        omega_max=10.0,
        dsm_p_mean=-1.2,
        dsm_p_std=1.2,
        dsm_xi_max=0.7,
        ctm_distance="d_teacher",
        dsm_weight_scale=0.2,
        max_dsm_weight=1e3,
        long_jump_fraction=0.0,
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def test_long_jumps_take_the_trajectorys_start_and_end_as_the_ctm_pair(teacher_pipe, teacher, scheduler):
    """With `--long_jump_fraction 1` every CTM sample is the whole jump: z_t is its trajectory's first point (t =
    σ_max, the 1-step draft's start), s = σ_min, and the target is the trajectory's last point itself (u = s: the
    target network's jump is the identity)."""
    from accelerate import Accelerator

    from distill.train import PhaseTimer, ctm_batch, make_student
    from distill.trajectories import TeacherTrajectories

    N = 10
    sigmas = torch.from_numpy(scheduler.karras_sigmas(N)).float()
    points = torch.randn(5, N, 4, 16, generator=gen(20))
    trajectories = TeacherTrajectories(points, torch.linspace(1.0, 3.0, 5), PROMPTS[:5])
    target = make_student(teacher_pipe.transformer, 16).requires_grad_(False)
    audio = torch.randn(6, 1, 16 * teacher_pipe.vae.hop_length, generator=gen(21)) * 0.1
    for fraction in (1.0, 0.0):
        batch = ctm_batch(
            audio,
            PROMPTS[:6],
            accelerator=Accelerator(cpu=True),
            target=target,
            teacher=teacher,
            pipe=teacher_pipe,
            scheduler=scheduler,
            sigmas=sigmas,
            uncond_embeds=(embeds(teacher_pipe, [""]), None),
            args=step_args(long_jump_fraction=fraction, heun_step_strategy="uniform"),
            shared_generator=gen(22),
            generator=gen(23),
            timer=PhaseTimer(torch.device("cpu"), enabled=False),
            trajectories=trajectories,
        )
        # which trajectory and grid point each z_t is
        match = ((batch.z_t[:, None, None] - points[None]) ** 2).flatten(3).sum(-1) == 0  # (B, M, N)
        index, n = (match.nonzero()[:, i] for i in (1, 2))
        assert len(index) == len(audio)
        torch.testing.assert_close(batch.t, sigmas[n])
        if fraction == 1.0:
            assert bool((n == 0).all()) and bool((batch.s == sigmas[-1]).all())
            torch.testing.assert_close(batch.z_target, points[index, -1])
            torch.testing.assert_close(batch.omega, trajectories.omega[index])
        else:  # the paper's draw: t anywhere on the grid (these seeds draw some t below σ_max)
            assert bool((n > 0).any())


@pytest.mark.parametrize("distance", ["d_teacher", "l2"])
def test_student_update_has_the_gradients_of_eq9(teacher_pipe, teacher, scheduler, distance):
    """The step's backward (from ∂L/∂F, λ_DSM from activations) gives the gradients of L_CTM + 0.2·λ_DSM·L_DSM
    computed directly, with λ_DSM from autograd on the last layer's weight as the authors' code does."""
    from accelerate import Accelerator

    from distill.train import LayerInput, PhaseTimer, ctm_batch, make_student, student_backward

    accelerator = Accelerator(cpu=True)
    args = step_args(ctm_distance=distance)
    student = make_student(teacher_pipe.transformer, 16)
    target = copy.deepcopy(student).requires_grad_(False)
    reference = copy.deepcopy(student)
    timer = PhaseTimer(torch.device("cpu"), enabled=False)
    audio = torch.randn(3, 1, 16 * teacher_pipe.vae.hop_length, generator=gen(17)) * 0.1
    batch = ctm_batch(
        audio,
        PROMPTS[:3],
        accelerator=accelerator,
        target=target,
        teacher=teacher,
        pipe=teacher_pipe,
        scheduler=scheduler,
        sigmas=torch.from_numpy(scheduler.karras_sigmas(10)).float(),
        uncond_embeds=(embeds(teacher_pipe, [""]), None),
        args=args,
        shared_generator=gen(18),
        generator=gen(19),
        timer=timer,
    )
    logs = student_backward(
        batch,
        accelerator=accelerator,
        student=student,
        last_layer_input=LayerInput(student.postprocess_conv),
        teacher=teacher,
        scheduler=scheduler,
        args=args,
        timer=timer,
    )

    # Direct: two student calls, L_CTM in the chosen distance, λ_DSM by autograd on the last layer, one backward.
    z_est, _ = ctm_jump(scheduler, student_output(reference, scheduler, batch.z_t, batch.t, batch.s, batch.omega, batch.cond), batch.z_t, batch.t, batch.s)
    F_dsm = student_output(reference, scheduler, batch.z_dsm, batch.dsm_sigma, batch.dsm_sigma, batch.omega, batch.cond)
    _, g_dsm = ctm_jump(scheduler, F_dsm, batch.z_dsm, batch.dsm_sigma, batch.dsm_sigma)
    if distance == "d_teacher":
        loss_ctm = d_teacher(teacher.block_features(z_est, batch.s, batch.cond), teacher.block_features(batch.z_target, batch.s, batch.cond)).mean()
    else:
        loss_ctm = ((z_est - batch.z_target) ** 2).mean()
    loss_dsm = dsm_loss(g_dsm, batch.z0, batch.dsm_sigma, 0.5).mean()
    W = reference.postprocess_conv.weight
    grad_ctm_W = torch.autograd.grad(loss_ctm, W, retain_graph=True)[0]
    grad_dsm_W = torch.autograd.grad(loss_dsm, W, retain_graph=True)[0]
    lambda_dsm = torch.clamp(grad_ctm_W.norm() / (grad_dsm_W.norm() + 1e-8), 0.0, 1e3).detach()
    (loss_ctm + 0.2 * lambda_dsm * loss_dsm).backward()

    assert logs["lambda_dsm"] == pytest.approx(lambda_dsm.item(), rel=1e-4)
    assert logs["loss_ctm"] == pytest.approx(loss_ctm.item(), rel=1e-5)
    assert logs["loss_dsm"] == pytest.approx(loss_dsm.item(), rel=1e-5)
    for (name, p), q in zip(student.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_target_network_and_export_ema_average_the_student(teacher_pipe):
    """sg(θ) ← μ·sg(θ) + (1 − μ)·θ after every step, and the export EMA (diffusers EMAModel, with its warm-up)
    averages too, rather than copying, the parameters handed over by `full_student_parameters`."""
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    from distill.train import full_student_parameters, make_student, update_target
    from soundctm import SoundCTMDiTModel

    accelerator = Accelerator(cpu=True)
    student = make_student(teacher_pipe.transformer, 16)
    target = copy.deepcopy(student).requires_grad_(False)
    export_ema = EMAModel(student.parameters(), decay=0.9, model_cls=SoundCTMDiTModel, model_config=student.config)
    expected_target = [p.detach().clone() for p in student.parameters()]
    expected_shadow = [p.detach().clone() for p in student.parameters()]
    for step in (1, 2, 3):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.1 * step)
        with full_student_parameters(accelerator, student) as params:
            update_target(target, params, 0.8)
            export_ema.step(params)
        decay = 0.0 if step == 1 else min(step / (9 + step), 0.9)  # EMAModel: (1 + n) / (10 + n), n = step - 1
        for i, p in enumerate(student.parameters()):
            expected_target[i] = 0.8 * expected_target[i] + 0.2 * p.detach()
            expected_shadow[i] = decay * expected_shadow[i] + (1 - decay) * p.detach()
    for p, q in zip(target.parameters(), expected_target):
        torch.testing.assert_close(p, q)
    for p, q in zip(export_ema.shadow_params, expected_shadow):
        torch.testing.assert_close(p, q)
