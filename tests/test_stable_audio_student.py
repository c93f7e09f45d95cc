"""The SoundCTM student of Stable Audio Open (`SoundCTMStableAudioDiTModel`), on a tiny random `StableAudioDiTModel`
built in code under a fixed seed, with every weight nonzero: it loads the teacher strictly, it is exactly the teacher
plus emb(s) + emb(ω) on the time embedding, every sample gets its own s and ω, it round-trips through
save_pretrained, and the global/rotary states it builds when none are passed are those `StableAudioPipeline` passes."""

import json

import pytest
import torch
from diffusers import AutoencoderOobleck, EDMDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
from tiny_models import tiny_text_encoder

from soundctm import SoundCTMStableAudioDiTModel
from soundctm.stable_audio_soundctm import stable_audio_global_states, stable_audio_rotary_embedding
from soundctm.transformer_soundctm_dit import guidance_scale_embedding

TEXT = 16  # the tiny T5's width = cross_attention_input_dim; the global states are 2·TEXT wide
TINY = dict(
    sample_size=8,
    in_channels=4,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=4,
    num_key_value_attention_heads=2,
    out_channels=4,
    cross_attention_dim=12,
    time_proj_dim=16,
    global_states_input_dim=2 * TEXT,
    cross_attention_input_dim=TEXT,
)
FRAMES, TOKENS = 8, 5  # 3 text tokens + seconds_start + seconds_end


def perturb(model, seed):
    """Random offsets of either sign on every weight (the Fourier frequencies included), so that no weight is zero
    and no two tensors (norm scales of 1, zero biases) are alike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            sign = torch.randint(0, 2, p.shape, generator=g) * 2 - 1
            p.add_(sign * (0.02 + 0.08 * torch.rand(p.shape, generator=g)))
    return model.eval()


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = perturb(StableAudioDiTModel(**TINY), 1)
    assert all((p != 0).all() for p in model.parameters())
    return model


@pytest.fixture(scope="module")
def student(teacher):
    return SoundCTMStableAudioDiTModel.from_teacher(teacher).eval()


def inputs(batch=3, seed=4):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, TINY["in_channels"], FRAMES, generator=g),
        timestep=torch.rand(batch, generator=g) * 0.9 + 0.05,
        encoder_hidden_states=torch.randn(batch, TOKENS, TEXT, generator=g),
    )


def teacher_plus(teacher, extra, hidden_states, timestep, encoder_hidden_states, **kwargs):
    """The teacher's output with `extra` (batch, width) added to its time embedding `timestep_proj(time_proj(t))`,
    the global and rotary states built here as `StableAudioPipeline` builds them."""
    kwargs.setdefault("global_hidden_states", torch.cat([encoder_hidden_states[:, -2:-1], encoder_hidden_states[:, -1:]], 2))
    kwargs.setdefault(
        "rotary_embedding",
        get_1d_rotary_pos_embed(TINY["attention_head_dim"] // 2, FRAMES + 1, use_real=True, repeat_interleave_real=False),
    )
    handle = None
    if extra is not None:
        handle = teacher.timestep_proj.register_forward_hook(lambda module, args, output: output + extra)
    try:
        return teacher(hidden_states, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample
    finally:
        if handle is not None:
            handle.remove()


def test_from_teacher_loads_the_teacher_strictly(teacher, student):
    assert student.config.is_student is True and "is_student" not in teacher.config
    assert {k: v for k, v in student.config.items() if k != "is_student" and not k.startswith("_")} == dict(teacher.config)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert list(s_state) == list(t_state)  # no parameter of its own
    assert all(torch.equal(s_state[k], t_state[k]) for k in t_state)
    fresh = SoundCTMStableAudioDiTModel(**TINY)
    fresh.load_state_dict(t_state, strict=True)
    with pytest.raises(TypeError, match="StableAudioDiTModel"):
        SoundCTMStableAudioDiTModel.from_teacher(student)
    with pytest.raises(ValueError, match="is_student"):
        SoundCTMStableAudioDiTModel(**TINY, is_student=False)


@torch.no_grad()
def test_student_is_the_teacher_plus_emb_s_plus_emb_omega(teacher, student):
    """F_student(z, t, s, ω) = F_teacher with emb(t) replaced by emb(t) + emb_teacher(s) + emb(1000·ω), bit for bit:
    emb(s) through the teacher's own `timestep_proj(time_proj(·))`, ω through the parameter-free sin/cos embedding."""
    x = inputs()
    s = x["timestep"] * torch.tensor([0.2, 0.5, 0.9])
    omega = torch.tensor([1.0, 3.5, 7.0])
    width = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    extra = teacher.timestep_proj(teacher.time_proj(s)) + guidance_scale_embedding(omega, width)
    out = student(**x, target_timestep=s, guidance_scale=omega).sample
    assert torch.equal(out, teacher_plus(teacher, extra, **x))
    assert not student.timestep_proj._forward_hooks  # the hook lives for one call only
    # ... and the two terms do something: without them the student's output would be the teacher's, it is not.
    assert (out - teacher_plus(teacher, None, **x)).abs().amin(dim=(1, 2)).gt(0).all()

    # The same with a frame mask and explicit global states (passed through to the teacher's forward), and a text
    # mask in Stable Audio's convention: masked tokens zeroed, not hidden from attention.
    g = torch.Generator().manual_seed(5)
    enc_mask = torch.ones(3, TOKENS, dtype=torch.long)
    enc_mask[0, 1:3] = 0
    frame_mask = torch.ones(3, FRAMES, dtype=torch.bool)
    frame_mask[2, -3:] = False
    global_states = torch.randn(3, 1, 2 * TEXT, generator=g)
    kwargs = dict(encoder_attention_mask=enc_mask, attention_mask=frame_mask, global_hidden_states=global_states)
    out = student(**x, target_timestep=s, guidance_scale=omega, **kwargs).sample
    zeroed = dict(x, encoder_hidden_states=x["encoder_hidden_states"] * enc_mask[..., None])
    ref = teacher_plus(teacher, extra, **zeroed, attention_mask=frame_mask, global_hidden_states=global_states)
    assert torch.equal(out, ref)
    assert not torch.equal(out, student(**x, target_timestep=s, guidance_scale=omega).sample)


@torch.no_grad()
def test_a_false_mask_zeroes_tokens_but_the_global_token_keeps_the_seconds(teacher, student):
    """StableAudioPipeline's null condition (CFG without a negative prompt): an all-zero cross-attention sequence with
    the real seconds as global states. The student's all-False mask is exactly that; the seconds come from the last
    two tokens before they are zeroed."""
    x = inputs()
    s, omega = x["timestep"] * 0.5, torch.full((3,), 2.0)
    enc = x["encoder_hidden_states"]
    mask = torch.zeros(3, TOKENS, dtype=torch.bool)
    out = student(**x, target_timestep=s, guidance_scale=omega, encoder_attention_mask=mask).sample
    extra = teacher.timestep_proj(teacher.time_proj(s)) + guidance_scale_embedding(omega, TINY["num_attention_heads"] * TINY["attention_head_dim"])
    ref = teacher_plus(
        teacher, extra, x["hidden_states"], x["timestep"], torch.zeros_like(enc), global_hidden_states=stable_audio_global_states(enc)
    )
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="encoder_attention_mask must have shape"):
        student(**x, target_timestep=s, guidance_scale=omega, encoder_attention_mask=mask[:, 1:])


@torch.no_grad()
def test_s_and_omega_are_per_sample(student):
    x = inputs()
    s = x["timestep"] * torch.tensor([0.2, 0.5, 0.9])
    omega = torch.tensor([1.0, 3.5, 7.0])
    out = student(**x, target_timestep=s, guidance_scale=omega).sample
    for i in range(3):
        row = {k: v[i : i + 1] for k, v in x.items()}
        alone = student(**row, target_timestep=s[i : i + 1], guidance_scale=omega[i : i + 1]).sample
        torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    # Changing s alone, or ω alone, changes the output, and only in the rows where it changed.
    s2, omega2 = s.clone(), omega.clone()
    s2[1], omega2[1] = 0.01, 2.0
    for s2, omega2 in ((s2, omega), (s, omega2)):
        out2 = student(**x, target_timestep=s2, guidance_scale=omega2).sample
        assert torch.equal(out2[[0, 2]], out[[0, 2]])
        assert (out2[1] - out[1]).abs().max() > 1e-4
    # A scalar s and ω are broadcast to every sample.
    scalar = student(**x, target_timestep=0.3, guidance_scale=5.0).sample
    full = student(**x, target_timestep=torch.full((3,), 0.3), guidance_scale=torch.full((3,), 5.0)).sample
    assert torch.equal(scalar, full)
    with pytest.raises(ValueError, match="target_timestep"):
        student(**x, guidance_scale=omega)
    with pytest.raises(ValueError, match="guidance_scale must be"):
        student(**x, target_timestep=s, guidance_scale=torch.ones(2))


@torch.no_grad()
def test_save_load_round_trip(student, tmp_path):
    x = inputs()
    kwargs = dict(target_timestep=x["timestep"] * 0.5, guidance_scale=torch.tensor([2.0, 4.0, 6.0]))
    student.save_pretrained(tmp_path)
    loaded = SoundCTMStableAudioDiTModel.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["is_student"] is True
    assert loaded.config.is_student is True
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(student.config)
    assert torch.equal(loaded(**x, **kwargs).sample, student(**x, **kwargs).sample)


def tiny_stable_audio_pipeline(transformer):
    text_encoder, tokenizer, width = tiny_text_encoder("sequence", seed=0)
    assert width == TEXT
    torch.manual_seed(6)
    vae = AutoencoderOobleck(
        encoder_hidden_size=6,
        downsampling_ratios=[1, 2],
        channel_multiples=[1, 2],
        decoder_channels=6,
        decoder_input_channels=TINY["in_channels"],
        audio_channels=2,
        sampling_rate=16,
    )
    projection = StableAudioProjectionModel(text_encoder_dim=TEXT, conditioning_dim=TEXT, min_value=0, max_value=8)
    scheduler = EDMDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0)
    return StableAudioPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder,
        projection_model=projection.eval(),
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=scheduler,
    )


@torch.no_grad()
@pytest.mark.parametrize("negative_prompt", [["noise", "hum"], None])
def test_default_global_and_rotary_states_are_the_pipelines(teacher, student, negative_prompt):
    pipe = tiny_stable_audio_pipeline(teacher)
    calls = []
    handle = teacher.register_forward_pre_hook(lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    try:
        pipe(
            ["a dog barks", "rain"],
            negative_prompt=negative_prompt,
            num_inference_steps=2,
            guidance_scale=3.0,
            audio_end_in_s=0.75,
            generator=torch.Generator().manual_seed(7),
            output_type="pt",
        )
    finally:
        handle.remove()
    assert len(calls) == 2
    (latents, t), kwargs = calls[0]
    enc, global_states, rotary = kwargs["encoder_hidden_states"], kwargs["global_hidden_states"], kwargs["rotary_embedding"]
    assert latents.shape == (4, TINY["in_channels"], FRAMES) and enc.shape[0] == 4
    ours = stable_audio_rotary_embedding(TINY["attention_head_dim"], latents.shape[2])
    assert all(torch.equal(a, b) for a, b in zip(ours, rotary))
    derived = stable_audio_global_states(enc)
    if negative_prompt is not None:
        # The last two tokens of encoder_hidden_states are the seconds states the global token is made of.
        assert torch.equal(derived, global_states)
    else:
        # Without a negative prompt the pipeline's unconditional half is all zeros in encoder_hidden_states but keeps
        # the real seconds in the global states: there the caller must pass global_hidden_states.
        assert torch.equal(derived[2:], global_states[2:]) and not derived[:2].any() and global_states[:2].any()

    # The student called as the project calls every student (no global/rotary states) equals the student called
    # with the pipeline's own, on the rows where the pipeline's global states are its encoder states' seconds.
    rows = slice(0, 4) if negative_prompt is not None else slice(2, 4)
    n = latents[rows].shape[0]
    call = dict(target_timestep=torch.full((n,), 0.1), guidance_scale=torch.full((n,), 3.0), encoder_hidden_states=enc[rows])
    plain = student(latents[rows], t.expand(4)[rows], **call).sample
    explicit = student(
        latents[rows], t.expand(4)[rows], global_hidden_states=global_states[rows], rotary_embedding=rotary, **call
    ).sample
    assert torch.equal(plain, explicit)


def test_gradient_checkpointing_and_dtype(teacher):
    """Training: gradients reach the shared time embedding through both t and s, with gradient checkpointing; and
    the student runs in bfloat16 as the teacher does."""
    student = SoundCTMStableAudioDiTModel.from_teacher(teacher).train()
    student.enable_gradient_checkpointing()
    x = inputs()
    out = student(**x, target_timestep=x["timestep"] * 0.5, guidance_scale=torch.tensor([1.0, 2.0, 3.0])).sample
    out.square().mean().backward()
    grads = {name: p.grad for name, p in student.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert not student.timestep_proj._forward_hooks

    half = SoundCTMStableAudioDiTModel.from_teacher(teacher).to(torch.bfloat16).eval()
    with torch.no_grad():
        out = half(**{k: v.to(torch.bfloat16) for k, v in x.items()}, target_timestep=0.2, guidance_scale=4.0).sample
        ref = SoundCTMStableAudioDiTModel.from_teacher(teacher).eval()(**x, target_timestep=0.2, guidance_scale=4.0).sample
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
