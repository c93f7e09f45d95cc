"""SoundCTMPipeline: the sampling it promises (against an independent sampler written as the authors' code does
it), guidance, determinism, batching, outputs, the teacher, text embeddings, and bad input."""

import logging as pylogging

import numpy as np
import pytest
import torch
from tiny_models import tiny_pipeline

from soundctm import CTMScheduler, EDMHeunScheduler, SoundCTMPipeline


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline(student=True, text_embedding="projected")
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def teacher():
    p = tiny_pipeline(student=False, text_embedding="projected")
    p.set_progress_bar_config(disable=True)
    return p


def gen(seed):
    return torch.Generator().manual_seed(seed)


def authors_gamma_sampling(pipe, prompts, uncond, steps, omega, nu, gamma, x_T, noise_generator):
    """The authors' `gamma_multistep_sampling`: one batch [z; z] with prompts [cond; uncond], ω for both halves,
    jumps G computed per half and combined as G_∅ + ν(G_c − G_∅), re-noised except after the last jump."""
    sched = CTMScheduler()
    t_grid = torch.from_numpy(sched.karras_sigmas(steps + 1)).float()
    emb = pipe.encode_text(prompts + uncond, torch.device("cpu"))
    d, t_min = 0.5, 0.002
    x = x_T * 80.0
    for i in range(steps):
        t = t_grid[i]
        s = np.sqrt(1.0 - gamma**2) * (t_grid[i + 1] - t_min) + t_min
        x_in = torch.cat([x, x])
        c_in = 1 / torch.sqrt(t**2 + d**2)
        F = pipe.transformer(
            c_in * x_in,
            timestep=torch.log(t).expand(len(x_in)) / 4,
            target_timestep=torch.log(s).expand(len(x_in)) / 4,
            guidance_scale=torch.full((len(x_in),), omega),
            encoder_hidden_states=emb,
        ).sample
        g = d**2 / (t**2 + d**2) * x_in + t * d / torch.sqrt(t**2 + d**2) * F
        G = s / t * x_in + (1 - s / t) * g
        G_c, G_u = G.chunk(2)
        x = G_u + nu * (G_c - G_u)
        if i < steps - 1 and gamma > 0:
            x = x + torch.sqrt(t_grid[i + 1] ** 2 - s**2) * torch.randn(x.shape, generator=noise_generator)
    return x


# ------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("steps, nu, gamma", [(1, 1.0, 0.0), (4, 1.0, 0.0), (1, 3.0, 0.0), (4, 5.0, 0.0), (4, 2.0, 0.5), (3, 1.0, 1.0)])
def test_pipeline_sampling_equals_the_authors_gamma_sampler(pipe, steps, nu, gamma):
    prompts = ["a dog barks", "rain falls on a roof"]
    x_T = torch.randn(2, 4, 16, generator=gen(0))
    ref = authors_gamma_sampling(pipe, prompts, ["", ""], steps, 5.0, nu, gamma, x_T, gen(1))
    latents = x_T.clone()
    # Our pipeline draws the re-noising from the generator after the initial noise; replay the same stream.
    g = gen(1)
    out = pipe(prompts, num_inference_steps=steps, nu=nu, gamma=gamma, latents=latents, generator=g,
               output_type="latent").audios
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_nu_combination_equals_two_separate_calls(pipe):
    kw = dict(num_inference_steps=1, generator=None, output_type="latent")
    x_T = torch.randn(1, 4, 16, generator=gen(3))
    cond = pipe("a siren wails", latents=x_T, **kw).audios
    uncond = pipe("", latents=x_T, **kw).audios
    for nu in (0.0, 2.5, 5.0):
        mixed = pipe("a siren wails", nu=nu, latents=x_T, **kw).audios
        torch.testing.assert_close(mixed, uncond + nu * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_nu_one_skips_the_unconditional_half_and_equals_the_full_path(pipe):
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: batches.append(args[0].shape[0]), with_kwargs=True)
    try:
        x_T = torch.randn(2, 4, 16, generator=gen(4))
        fast = pipe(["a dog barks", "a bird chirps"], num_inference_steps=3, nu=1.0, latents=x_T, output_type="latent").audios
        assert batches == [2, 2, 2]
        batches.clear()
        pipe(["a dog barks", "a bird chirps"], num_inference_steps=3, nu=2.0, latents=x_T, output_type="latent")
        assert batches == [4, 4, 4]
    finally:
        hook.remove()
    full = authors_gamma_sampling(pipe, ["a dog barks", "a bird chirps"], ["", ""], 3, 5.0, 1.0, 0.0, x_T, None)
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-5)


def test_negative_prompt_replaces_the_empty_prompt(pipe):
    x_T = torch.randn(1, 4, 16, generator=gen(5))
    out = pipe("a dog barks", negative_prompt="rain falls", nu=3.0, num_inference_steps=2, latents=x_T, output_type="latent").audios
    ref = authors_gamma_sampling(pipe, ["a dog barks"], ["rain falls"], 2, 5.0, 3.0, 0.0, x_T, None)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    plain = pipe("a dog barks", nu=3.0, num_inference_steps=2, latents=x_T, output_type="latent").audios
    assert not torch.allclose(out, plain)


def test_omega_is_an_input_of_the_student(pipe):
    a = pipe("a dog barks", guidance_scale=2.0, generator=gen(0)).audios
    b = pipe("a dog barks", guidance_scale=8.0, generator=gen(0)).audios
    assert not np.allclose(a, b)


# ------------------------------------------------------------------------------------------ determinism
def test_a_call_without_omega_uses_the_models_own_which_its_folder_and_companions_keep(pipe, tmp_path):
    from soundctm.pipeline_soundctm_bwe import SoundCTMBandwidthExtensionPipeline

    assert pipe.default_guidance_scale == 5.0  # the paper's, for a pipeline built without one
    own = SoundCTMPipeline(**pipe.components, text_embedding="projected", guidance_scale=2.0)
    own.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=1, latents=torch.randn(1, 4, 16, generator=gen(6)), output_type="latent")
    torch.testing.assert_close(own("a siren wails", **kw).audios, own("a siren wails", guidance_scale=2.0, **kw).audios)
    assert not torch.allclose(own("a siren wails", **kw).audios, pipe("a siren wails", **kw).audios)
    own.save_pretrained(tmp_path)
    assert SoundCTMPipeline.from_pretrained(tmp_path).default_guidance_scale == 2.0
    assert SoundCTMBandwidthExtensionPipeline.from_pipe(own).default_guidance_scale == 2.0
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        SoundCTMPipeline(**pipe.components, guidance_scale=float("nan"))


def test_a_model_may_set_its_own_default_step_count(teacher, tmp_path):
    assert teacher.default_num_inference_steps == 40
    own = SoundCTMPipeline(**teacher.components, text_embedding="projected", num_inference_steps=3)
    own.set_progress_bar_config(disable=True)
    assert own.default_num_inference_steps == 3
    kw = dict(latents=torch.randn(1, 4, 16, generator=gen(8)), output_type="latent")
    torch.testing.assert_close(own("a dog barks", **kw).audios, own("a dog barks", num_inference_steps=3, **kw).audios)
    own.save_pretrained(tmp_path)
    assert SoundCTMPipeline.from_pretrained(tmp_path).default_num_inference_steps == 3
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_inference_steps"):
            SoundCTMPipeline(**teacher.components, num_inference_steps=bad)


def test_same_seed_gives_the_same_audio_and_another_seed_does_not(pipe):
    kw = dict(num_inference_steps=4, gamma=0.3, nu=2.0)
    a = pipe("a dog barks", generator=gen(11), **kw).audios
    b = pipe("a dog barks", generator=gen(11), **kw).audios
    c = pipe("a dog barks", generator=gen(12), **kw).audios
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_every_step_count_starts_from_the_same_noise_for_a_seed(pipe):
    starts = []
    for steps in (1, 2, 8, 16):
        x_T = pipe.prepare_latents(1, torch.float32, torch.device("cpu"), gen(7))
        out = pipe("a dog barks", num_inference_steps=steps, generator=gen(7), output_type="latent").audios
        ref = pipe("a dog barks", num_inference_steps=steps, latents=x_T, output_type="latent").audios
        torch.testing.assert_close(out, ref)
        starts.append(x_T)
    assert all(torch.equal(s, starts[0]) for s in starts)


def test_per_waveform_generators_make_each_waveform_independent_of_the_batch(pipe):
    batch = pipe(["a dog barks", "a siren wails"], num_waveforms_per_prompt=2, num_inference_steps=2, gamma=0.5,
                 generator=[gen(i) for i in range(4)]).audios
    assert batch.shape == (4, 1, 128)
    prompts = ["a dog barks", "a dog barks", "a siren wails", "a siren wails"]
    for i, prompt in enumerate(prompts):
        single = pipe(prompt, num_inference_steps=2, gamma=0.5, generator=[gen(i)]).audios
        np.testing.assert_allclose(batch[i : i + 1], single, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ outputs
def test_output_types_and_cropping(pipe):
    np_out = pipe("a dog barks", generator=gen(0)).audios
    assert isinstance(np_out, np.ndarray) and np_out.dtype == np.float32 and np_out.shape == (1, 1, 128)
    pt_out = pipe("a dog barks", generator=gen(0), output_type="pt").audios
    assert isinstance(pt_out, torch.Tensor)
    np.testing.assert_array_equal(pt_out.numpy(), np_out)
    latent = pipe("a dog barks", generator=gen(0), output_type="latent").audios
    assert latent.shape == (1, 4, 16)
    cropped = pipe("a dog barks", generator=gen(0), audio_length_in_s=100 / 44100).audios
    assert cropped.shape == (1, 1, 100)
    np.testing.assert_array_equal(cropped, np_out[..., :100])
    assert np.abs(np_out).max() <= 1.0
    assert pipe("a dog barks", generator=gen(0), return_dict=False)[0].shape == (1, 1, 128)


def test_callback_sees_every_step_and_can_replace_the_latents(pipe):
    seen = []

    def callback(p, i, t, kw):
        seen.append((i, kw["latents"].shape))
        return {"latents": torch.zeros_like(kw["latents"])} if i == 2 else {}

    out = pipe("a dog barks", num_inference_steps=3, generator=gen(0), output_type="latent",
               callback_on_step_end=callback).audios
    assert [i for i, _ in seen] == [0, 1, 2]
    assert torch.equal(out, torch.zeros_like(out))


def test_progress_bar_counts_network_evaluations(pipe, teacher, capsys):
    pipe.set_progress_bar_config(disable=False)
    try:
        pipe("a dog barks", num_inference_steps=3)
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "3/3" in capsys.readouterr().err


def test_nan_and_silent_output_are_reported(caplog):
    p = tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    from diffusers.utils import logging as dlogging

    dlogging.enable_propagation()
    try:
        with torch.no_grad():
            p.vae.decoder.model[-2].weight.zero_()
            p.vae.decoder.model[-2].bias.zero_()
        with caplog.at_level(pylogging.WARNING):
            p("a dog barks")
        assert "silent" in caplog.text
        caplog.clear()
        with torch.no_grad():
            p.transformer.proj_out.weight[0, 0] = float("nan")
        with caplog.at_level(pylogging.WARNING):
            p("a dog barks")
        assert "NaN" in caplog.text
    finally:
        dlogging.disable_propagation()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pipeline_runs_in_half_precision(dtype):
    p = tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    ref = p("a dog barks", num_inference_steps=2, generator=gen(0), output_type="latent").audios
    p.to(dtype=dtype)
    out = p("a dog barks", num_inference_steps=2, generator=gen(0), output_type="latent").audios
    assert p.transformer.dtype == dtype and torch.isfinite(out).all()
    assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())
    assert np.isfinite(p("a dog barks", num_inference_steps=2, generator=gen(0)).audios).all()


# ------------------------------------------------------------------------------------------ teacher
def test_teacher_is_sampled_with_cfg_heun_through_the_same_call(teacher):
    x_T = torch.randn(1, 4, 16, generator=gen(9))
    out = teacher("a dog barks", num_inference_steps=5, guidance_scale=3.0, latents=x_T, output_type="latent").audios
    # EDM Heun with CFG on the denoiser, written directly.
    emb = teacher.encode_text(["a dog barks", ""], torch.device("cpu"))
    sched = EDMHeunScheduler()
    t_steps = list(torch.from_numpy(sched.karras_sigmas(5)).float()) + [torch.tensor(0.0)]

    def D(x, t):
        d = 0.5
        F = teacher.transformer(torch.cat([x, x]) / torch.sqrt(t**2 + d**2), timestep=torch.log(t).expand(2) / 4,
                                encoder_hidden_states=emb).sample
        Dx = d**2 / (t**2 + d**2) * torch.cat([x, x]) + t * d / torch.sqrt(t**2 + d**2) * F
        c, u = Dx.chunk(2)
        return u + 3.0 * (c - u)

    x = x_T * 80.0
    for i in range(5):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        d_cur = (x - D(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if t_next > 0:
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * (x_next - D(x_next, t_next)) / t_next)
        x = x_next
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


def test_teacher_defaults_to_40_heun_steps(teacher):
    calls = []
    hook = teacher.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        teacher("a dog barks", guidance_scale=1.0)
    finally:
        hook.remove()
    assert len(calls) == 79


def test_scheduler_must_fit_the_transformer(pipe, teacher):
    mixed = type(pipe)(**{**pipe.components, "scheduler": EDMHeunScheduler()}, text_embedding="projected")
    with pytest.raises(ValueError, match="CTMScheduler"):
        mixed("a dog barks")
    mixed = type(teacher)(**{**teacher.components, "scheduler": CTMScheduler()}, text_embedding="projected")
    with pytest.raises(ValueError, match="EDMHeunScheduler"):
        mixed("a dog barks")


# ------------------------------------------------------------------------------------------ text embeddings
@pytest.mark.parametrize("mode", ["projected", "pooled", "mean"])
def test_each_prompt_becomes_one_l2_normalised_token(mode):
    p = tiny_pipeline(text_embedding=mode)
    emb = p.encode_text(["a dog barks", "rain falls on a roof now"], torch.device("cpu"))
    assert emb.shape == (2, 1, p.transformer.config.cross_attention_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 1))
    # Padding in a batch does not change a prompt's embedding.
    torch.testing.assert_close(emb[:1], p.encode_text(["a dog barks"], torch.device("cpu")), rtol=1e-5, atol=1e-6)
    ids = p.tokenizer(["a dog barks"], return_tensors="pt")
    if mode == "projected":
        raw = p.text_encoder(**ids).text_embeds
    elif mode == "pooled":
        raw = p.text_encoder.text_model(**ids).pooler_output
    else:
        raw = p.text_encoder(**ids).last_hidden_state.mean(1)
    torch.testing.assert_close(emb[0, 0], torch.nn.functional.normalize(raw[0], dim=-1), rtol=1e-5, atol=1e-6)


def test_prompt_embeds_can_replace_prompts(pipe):
    emb = pipe.encode_text(["a dog barks"], torch.device("cpu"))
    a = pipe("a dog barks", nu=2.0, generator=gen(0)).audios
    b = pipe(prompt_embeds=emb[:, 0], nu=2.0, generator=gen(0)).audios
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sequence_conditioning_attends_to_the_text_tokens_only():
    """text_embedding="sequence" (FLAN-T5 for the 16 kHz family): per-token states with their mask. Under ν the
    prompt and "" have different token counts; the padding the pipeline adds must change nothing."""
    p = tiny_pipeline(student=True, text_embedding="sequence")
    p.set_progress_bar_config(disable=True)
    cpu = torch.device("cpu")
    emb, mask = p.encode_text(["a dog barks", ""], cpu, return_mask=True)
    ids = p.tokenizer(["a dog barks"], return_tensors="pt")
    assert emb.shape == (2, ids.input_ids.shape[1], 16) and mask.tolist() == [[True] * 4, [True, False, False, False]]
    torch.testing.assert_close(emb[:1], p.text_encoder(**ids).last_hidden_state, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="return_mask=True"):
        p.encode_text(["a dog barks"], cpu)

    kw = dict(num_inference_steps=1, output_type="latent")
    x_T = torch.randn(1, 4, 16, generator=gen(3))
    cond = p("a siren wails", latents=x_T, **kw).audios
    uncond = p("", latents=x_T, **kw).audios
    assert not torch.allclose(cond, uncond)
    mixed = p("a siren wails", nu=2.5, latents=x_T, **kw).audios
    torch.testing.assert_close(mixed, uncond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-5)
    # Precomputed embeddings with their masks give the prompts' result; padded further, still the same.
    e, m = p.encode_text(["a siren wails"], cpu, return_mask=True)
    ne, nm = p.encode_text([""], cpu, return_mask=True)
    padded_e = torch.nn.functional.pad(e, (0, 0, 0, 3))
    padded_m = torch.nn.functional.pad(m, (0, 3), value=False)
    out = p(prompt_embeds=padded_e, prompt_attention_mask=padded_m, negative_prompt_embeds=ne,
            negative_prompt_attention_mask=nm, nu=2.5, latents=x_T, **kw).audios  # fmt: skip
    torch.testing.assert_close(out, mixed, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        p(prompt_embeds=e, prompt_attention_mask=m[:, :2], latents=x_T, **kw)
    with pytest.raises(ValueError, match="prompt_embeds"):
        p("a siren wails", prompt_attention_mask=m, latents=x_T, **kw)


# ------------------------------------------------------------------------------------------ bad input
BAD_INPUTS = [
    (dict(prompt=[]), ValueError, "prompt"),
    (dict(prompt=None), ValueError, "prompt_embeds"),
    (dict(prompt=3), TypeError, "prompt"),
    (dict(prompt=["a", "b"], negative_prompt=["x"]), ValueError, "negative_prompt"),
    (dict(prompt_embeds=torch.zeros(1, 8)), ValueError, "prompt_embeds"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(num_inference_steps=2.5), TypeError, "num_inference_steps"),
    (dict(gamma=1.2), ValueError, "gamma"),
    (dict(gamma=-0.1), ValueError, "gamma"),
    (dict(gamma=float("nan")), ValueError, "gamma"),
    (dict(nu=float("inf")), ValueError, "nu"),
    (dict(nu=float("nan")), ValueError, "nu"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(guidance_scale=float("-inf")), ValueError, "guidance_scale"),
    (dict(audio_length_in_s=0), ValueError, "audio_length_in_s"),
    (dict(audio_length_in_s=-1.0), ValueError, "audio_length_in_s"),
    (dict(audio_length_in_s=1.0), ValueError, "audio_length_in_s"),
    (dict(num_waveforms_per_prompt=0), ValueError, "num_waveforms_per_prompt"),
    (dict(latents=torch.zeros(1, 4, 15)), ValueError, "latents"),
    (dict(latents=torch.zeros(2, 4, 16)), ValueError, "latents"),
    (dict(generator=[torch.Generator(), torch.Generator()]), ValueError, "generator"),
    (dict(output_type="wav"), ValueError, "output_type"),
    (dict(negative_prompt="x", negative_prompt_embeds=torch.zeros(1, 1, 16)), ValueError, "negative_prompt"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, "callback_on_step_end_tensor_inputs"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD_INPUTS)
def test_bad_input_raises_an_error_naming_the_argument(pipe, kwargs, error, name):
    call = {"prompt": "a dog barks", **kwargs}
    if "prompt_embeds" in kwargs:
        call["prompt"] = None
    with pytest.raises(error, match=name):
        pipe(**call)


def test_both_prompt_and_prompt_embeds_is_refused(pipe):
    with pytest.raises(ValueError, match="exactly one of `prompt` and `prompt_embeds`"):
        pipe("a dog barks", prompt_embeds=torch.zeros(1, 1, 16))
