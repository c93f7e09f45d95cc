"""The DiT and the Gaussian DAC VAE: shapes, the teacher/student switch, the authors' key layout, gradient
checkpointing, dtypes, configs."""

import math

import pytest
import torch
from tiny_models import tiny_transformer, tiny_vae

from soundctm import AutoencoderGaussianDAC, SoundCTMDiTModel
from soundctm.transformer_soundctm_dit import convert_authors_state_dict, guidance_scale_embedding


def inputs(model, batch=2, frames=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return dict(
        hidden_states=torch.randn(batch, c.in_channels, frames, generator=g),
        timestep=torch.rand(batch, generator=g) * 2 - 1,
        encoder_hidden_states=torch.randn(batch, 1, c.cross_attention_dim, generator=g),
    )


def student_inputs(model, **kw):
    x = inputs(model, **kw)
    x.update(target_timestep=x["timestep"] - 0.5, guidance_scale=torch.tensor([2.0, 7.0]))
    return x


# ------------------------------------------------------------------------------------------ DiT
def test_student_output_has_the_latent_shape_and_depends_on_s_and_omega():
    model = tiny_transformer(16)
    x = student_inputs(model)
    out = model(**x).sample
    assert out.shape == x["hidden_states"].shape
    assert not torch.allclose(out, model(**{**x, "target_timestep": x["timestep"] - 0.1}).sample)
    assert not torch.allclose(out, model(**{**x, "guidance_scale": torch.tensor([3.0, 7.0])}).sample)
    assert not torch.allclose(out, model(**{**x, "encoder_hidden_states": -x["encoder_hidden_states"]}).sample)


def test_student_is_the_teacher_plus_inputs_with_no_new_parameters():
    teacher = tiny_transformer(16, is_student=False, seed=3)
    student = SoundCTMDiTModel.from_config({**teacher.config, "is_student": True})
    student.load_state_dict(teacher.state_dict(), strict=True)
    assert teacher.state_dict().keys() == student.state_dict().keys()
    with pytest.raises(ValueError, match="target_timestep"):
        student(**inputs(student))
    with pytest.raises(ValueError, match="teacher"):
        teacher(**student_inputs(teacher))


def test_sinusoidal_positions_are_one_trained_scale_on_an_additive_sinusoid(tmp_path):
    plain = tiny_transformer(16, is_student=False, seed=3)
    with_positions = SoundCTMDiTModel.from_config(plain.config, sinusoidal_position_embedding=True)
    missing, unexpected = with_positions.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["position_embedding.scale"] and not unexpected
    x = inputs(plain)
    assert not torch.allclose(with_positions(**x).sample, plain(**x).sample)
    with torch.no_grad():
        with_positions.position_embedding.scale.zero_()
    torch.testing.assert_close(with_positions(**x).sample, plain(**x).sample)
    # a student initialised from such a teacher keeps the positions, and the folder round-trips
    student = SoundCTMDiTModel.from_config(with_positions.config, is_student=True)
    student.load_state_dict(with_positions.state_dict(), strict=True)
    with_positions.save_pretrained(tmp_path)
    loaded = SoundCTMDiTModel.from_pretrained(tmp_path)
    assert loaded.config.sinusoidal_position_embedding
    torch.testing.assert_close(loaded(**x).sample, with_positions(**x).sample)


def test_omega_embedding_is_the_authors_sinusoid():
    w = torch.tensor([1.0, 5.5])
    dim = 12
    half = dim // 2
    freqs = torch.exp(torch.arange(half) * -(math.log(10000.0) / (half - 1)))
    args = (w * 1000.0)[:, None] * freqs[None]
    torch.testing.assert_close(guidance_scale_embedding(w, dim), torch.cat([args.sin(), args.cos()], 1))


def test_block_hidden_states_are_every_block_output_including_the_global_token():
    model = tiny_transformer(16, is_student=False)
    out = model(**inputs(model, frames=10), output_block_hidden_states=True)
    assert len(out.block_hidden_states) == model.config.num_layers
    assert all(h.shape == (2, 11, model.inner_dim) for h in out.block_hidden_states)


def test_masked_context_tokens_do_not_change_the_output():
    model = tiny_transformer(16, is_student=False)
    x = inputs(model)
    ctx = torch.cat([x["encoder_hidden_states"], torch.randn(2, 2, 16)], dim=1)
    mask = torch.tensor([[1, 0, 0], [1, 0, 0]])
    out = model(**{**x, "encoder_hidden_states": ctx, "encoder_attention_mask": mask}).sample
    torch.testing.assert_close(out, model(**x).sample, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    model = tiny_transformer(16).train()
    x = student_inputs(model)
    out = model(**x).sample
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    out2 = model(**x).sample
    out2.square().mean().backward()
    torch.testing.assert_close(out2, out)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_dit_runs_in_half_precision_close_to_fp32(dtype):
    model = tiny_transformer(16)
    x = student_inputs(model)
    ref = model(**x).sample
    half = model.to(dtype)(**{**x, "hidden_states": x["hidden_states"].to(dtype),
                                "encoder_hidden_states": x["encoder_hidden_states"].to(dtype)}).sample
    assert half.dtype == dtype and torch.isfinite(half).all()
    assert float((half.float() - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_config_rejects_incompatible_head_layout():
    with pytest.raises(ValueError, match="cross_attention_dim"):
        SoundCTMDiTModel(num_layers=1, attention_head_dim=8, num_attention_heads=4, cross_attention_dim=12)
    model = tiny_transformer(16)
    with pytest.raises(ValueError, match="cross_attention_dim=16"):
        model(**{**student_inputs(model), "encoder_hidden_states": torch.randn(2, 1, 8)})
    with pytest.raises(ValueError, match="hidden_states"):
        model(**{**student_inputs(model), "hidden_states": torch.randn(2, 3, 16)})


def authors_state_dict(model: SoundCTMDiTModel, teacher: bool, seed=0) -> dict:
    """A state dict in the key layout of the authors' `CTMDiffusionTransformer` (inside SA_EDM.dit), written out
    from their module structure, with random values of the right shapes."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    dim, ctx, ff = model.inner_dim, c.cross_attention_dim, model.inner_dim * c.ff_mult
    shapes = {
        "timestep_features.weight": (c.timestep_features_dim // 2, 1),
        "to_timestep_embed.0.weight": (dim, c.timestep_features_dim),
        "to_timestep_embed.0.bias": (dim,),
        "to_timestep_embed.2.weight": (dim, dim),
        "to_timestep_embed.2.bias": (dim,),
        "to_cond_embed.0.weight": (ctx, ctx),
        "to_cond_embed.2.weight": (ctx, ctx),
        "preprocess_conv.weight": (c.in_channels, c.in_channels, 1),
        "postprocess_conv.weight": (c.in_channels, c.in_channels, 1),
        "transformer.project_in.weight": (dim, c.in_channels),
        "transformer.project_out.weight": (c.in_channels, dim),
    }
    for i in range(c.num_layers):
        p = f"transformer.layers.{i}."
        shapes.update({
            p + "pre_norm.gamma": (dim,),
            p + "self_attn.to_qkv.weight": (3 * dim, dim),
            p + "self_attn.to_out.weight": (dim, dim),
            p + "cross_attend_norm.gamma": (dim,),
            p + "cross_attn.to_q.weight": (dim, dim),
            p + "cross_attn.to_kv.weight": (2 * ctx, ctx),
            p + "cross_attn.to_out.weight": (dim, dim),
            p + "ff_norm.gamma": (dim,),
            p + "ff.ff.0.proj.weight": (2 * ff, dim),
            p + "ff.ff.0.proj.bias": (2 * ff,),
            p + "ff.ff.2.weight": (dim, ff),
            p + "ff.ff.2.bias": (dim,),
        })
    sd = {k: torch.randn(v, generator=g) for k, v in shapes.items()}
    for i in range(c.num_layers):
        for norm in ("pre_norm", "cross_attend_norm", "ff_norm"):
            sd[f"transformer.layers.{i}.{norm}.beta"] = torch.zeros(dim)
    rot = min(max(c.attention_head_dim // 2, 32), c.attention_head_dim)
    sd["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    if teacher:
        sd["to_global_embed.0.weight"] = torch.randn(dim, dim, generator=g)
        sd["to_global_embed.2.weight"] = torch.randn(dim, dim, generator=g)
    return sd


@pytest.mark.parametrize("teacher", [False, True])
def test_authors_key_layout_maps_strictly_onto_the_model(teacher):
    model = tiny_transformer(16, is_student=not teacher)
    sd = authors_state_dict(model, teacher)
    converted, dropped = convert_authors_state_dict(sd, dict(model.config))
    model.load_state_dict(converted, strict=True)  # no key missing, none unexpected
    assert len(converted) + len(dropped) == len(sd)
    assert all(k.endswith(".beta") or "inv_freq" in k or "to_global_embed" in k for k in dropped)
    torch.testing.assert_close(model.transformer_blocks[1].attn2.to_kv.weight, sd["transformer.layers.1.cross_attn.to_kv.weight"])
    torch.testing.assert_close(model.transformer_blocks[0].ff.proj_in.bias, sd["transformer.layers.0.ff.ff.0.proj.bias"])
    torch.testing.assert_close(model.time_proj.weight, sd["timestep_features.weight"])


def test_authors_key_conversion_names_the_offending_key():
    model = tiny_transformer(16)
    sd = authors_state_dict(model, teacher=False)
    with pytest.raises(KeyError, match="transformer.layers.0.conformer.weight"):
        convert_authors_state_dict({**sd, "transformer.layers.0.conformer.weight": torch.zeros(1)}, dict(model.config))
    sd["transformer.layers.1.ff_norm.beta"] = torch.ones(model.inner_dim)
    with pytest.raises(ValueError, match="transformer.layers.1.ff_norm.beta"):
        convert_authors_state_dict(sd, dict(model.config))


def test_transformer_save_load_round_trip(tmp_path):
    model = tiny_transformer(16)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = SoundCTMDiTModel.from_pretrained(tmp_path)
    x = student_inputs(model)
    torch.testing.assert_close(loaded(**x).sample, model(**x).sample)


# ------------------------------------------------------------------------------------------ VAE
def test_vae_encodes_at_hop_length_and_decodes_back_to_samples():
    vae = tiny_vae()
    assert vae.hop_length == 8 and vae.sampling_rate == 44100
    audio = torch.randn(2, 1, 100) * 0.1
    posterior = vae.encode(audio).latent_dist
    assert posterior.mean.shape == (2, 4, 13)  # 100 samples right-padded to 104
    recon = vae.decode(posterior.mode()).sample
    assert recon.shape == (2, 1, 104) and recon.abs().max() <= 1
    sample = posterior.sample(torch.Generator().manual_seed(0))
    assert not torch.allclose(sample, posterior.mode())
    assert vae(audio).sample.shape == audio.shape


def test_latent_standardisation_round_trips_with_the_config_statistics():
    vae = tiny_vae()
    z = torch.randn(3, 4, 7)
    z_norm = vae.standardize(z)
    mean = torch.tensor(vae.config.latents_mean)[None, :, None]
    std = torch.tensor(vae.config.latents_std)[None, :, None]
    torch.testing.assert_close(z_norm, (z - mean) / std * 0.5)
    torch.testing.assert_close(vae.unstandardize(z_norm), z)


def test_vae_config_is_validated():
    with pytest.raises(ValueError, match="same product"):
        AutoencoderGaussianDAC(encoder_rates=[2, 4], decoder_rates=[4, 4])
    with pytest.raises(ValueError, match="latents_mean"):
        AutoencoderGaussianDAC(encoder_dim=4, encoder_rates=[2], latent_dim=4, decoder_dim=8, decoder_rates=[2],
                               latents_mean=[0.0])
    with pytest.raises(ValueError, match="audio"):
        tiny_vae().encode(torch.randn(2, 100))


def test_vae_save_load_round_trip(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path)
    loaded = AutoencoderGaussianDAC.from_pretrained(tmp_path)
    assert loaded.config.latents_std == vae.config.latents_std
    z = torch.randn(1, 4, 5)
    torch.testing.assert_close(loaded.decode(z).sample, vae.decode(z).sample)
