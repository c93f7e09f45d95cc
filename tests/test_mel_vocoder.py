"""The 16 kHz system's waveform ↔ latent component (AudioLDM's mel VAE + HiFi-GAN, `AutoencoderMelVocoder`) and the
conversion of AudioLDM's checkpoint into it, on tiny components built under a fixed seed. The AudioLDM-layout state
dicts are written out here from the latent-diffusion `Encoder`/`Decoder` and HiFi-GAN `Generator` module trees,
independently of the conversion's own mapping."""

import math

import pytest
import torch
from tiny_models import CHANNELS, LATENT, LAYERS, MEL, VAE, VOCODER, tiny_mel_vocoder

from hub.audioldm_checkpoint import convert_audioldm_checkpoint, convert_audioldm_state_dict
from soundctm import AutoencoderMelVocoder

HOP = MEL["stft_hop_length"] * 4
SCALE_FACTOR = 0.8


def test_encode_gives_quarter_resolution_latents_and_decode_gives_hop_length_samples_per_frame():
    model = tiny_mel_vocoder()
    assert model.hop_length == HOP and model.sampling_rate == 16000 and model.latent_mel_bins == 4
    audio = 0.5 * torch.randn(2, 1, 5 * HOP + 7, generator=torch.Generator().manual_seed(0))
    posterior = model.encode(audio).latent_dist
    assert posterior.mean.shape == (2, LATENT, 6, 4)  # right-padded to whole latent frames
    assert posterior.std.shape == posterior.mean.shape and (posterior.std > 0).all()
    sample = model.decode(posterior.mode()).sample
    assert sample.shape == (2, 1, 6 * HOP) and sample.dtype == torch.float32 and torch.isfinite(sample).all()
    assert model(audio).sample.shape == audio.shape


def test_bad_shapes_fail_with_the_expected_shape():
    model = tiny_mel_vocoder()
    with pytest.raises(ValueError, match=r"audio must have shape \(batch, 1, samples\)"):
        model.encode(torch.zeros(2, 2, 640))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 4, frames, 4\)"):
        model.decode(torch.zeros(1, LATENT, 3))
    with pytest.raises(ValueError, match=r"latent_dim=4"):
        model.standardize(torch.zeros(1, 3, 5, 4))
    with pytest.raises(ValueError, match="upsample_rates"):
        AutoencoderMelVocoder(vae_config=VAE, vocoder_config={**VOCODER, "upsample_rates": [5, 4]}, latent_dim=LATENT, **MEL)


def test_a_sine_lands_in_the_mel_band_around_its_frequency():
    model = tiny_mel_vocoder()
    t = torch.arange(8 * HOP) / 16000
    log_mel = model.mel_spectrogram(0.5 * torch.sin(2 * math.pi * 2000.0 * t)[None, None])
    assert log_mel.shape == (1, 1, 8 * 4, 16)
    band = log_mel[0, 0, 4:-4].mean(0).argmax().item()
    lower, upper = (float(model.mel_basis[band].nonzero()[i]) * 16000 / 256 for i in (0, -1))
    assert lower < 2000.0 < upper
    silence = model.mel_spectrogram(torch.zeros(1, 1, 4 * HOP))
    torch.testing.assert_close(silence, torch.full_like(silence, math.log(1e-5)))  # the log floor, not -inf


def test_decode_is_differentiable_in_the_latent():
    model = tiny_mel_vocoder()
    z = torch.randn(1, LATENT, 3, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    model.decode(z).sample.square().sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_standardize_is_per_channel_on_4d_latents_and_unstandardize_inverts_it():
    mean, std = [0.1, -0.2, 0.0, 0.3], [0.9, 1.1, 1.0, 0.8]
    model = tiny_mel_vocoder(latents_mean=mean, latents_std=std, scaling_factor=0.25)
    z = torch.randn(2, LATENT, 5, 4, generator=torch.Generator().manual_seed(2))
    z_norm = model.standardize(z)
    for c in range(LATENT):
        torch.testing.assert_close(z_norm[:, c], (z[:, c] - mean[c]) / std[c] * 0.25)
    torch.testing.assert_close(model.unstandardize(z_norm), z)


def test_save_pretrained_and_from_pretrained_give_the_same_model(tmp_path):
    model = tiny_mel_vocoder(latents_std=[1.25] * LATENT)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    loaded = AutoencoderMelVocoder.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    assert set(loaded.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    audio = 0.5 * torch.randn(1, 1, 2 * HOP, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = model.encode(audio).latent_dist.mean
        torch.testing.assert_close(loaded.encode(audio).latent_dist.mean, z, rtol=0, atol=0)
        torch.testing.assert_close(loaded.decode(z).sample, model.decode(z).sample, rtol=0, atol=0)


def test_a_bfloat16_model_encodes_float32_audio_with_a_float32_front_end():
    model = tiny_mel_vocoder()
    audio = 0.5 * torch.randn(1, 1, 3 * HOP, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = model.encode(audio).latent_dist.mean
        model.to(torch.bfloat16)
        assert model.mel_basis.dtype == torch.float32
        z = model.encode(audio).latent_dist.mean
        assert z.dtype == torch.bfloat16
        torch.testing.assert_close(z.float(), reference, rtol=0.1, atol=0.1)
        assert model.decode(z).sample.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ AudioLDM layout
def audioldm_state_dict(seed: int = 0, weight_norm_vocoder: bool = False) -> dict:
    """An AudioLDM `LatentDiffusion` state dict at the tiny sizes above: `first_stage_model.*` named as the
    latent-diffusion VAE and HiFi-GAN V1 name their modules, `scale_factor`, and keys of the rest of the model."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}

    def resnet(prefix, cin, cout):
        shapes.update({f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
                       f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
                       f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
                       f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)})  # fmt: skip
        if cin != cout:
            shapes.update({f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.nin_shortcut.bias": (cout,)})

    def conv(prefix, *shape):
        shapes.update({f"{prefix}.weight": shape, f"{prefix}.bias": (shape[0],)})

    def middle(prefix, c):
        resnet(f"{prefix}.mid.block_1", c, c)
        shapes.update({f"{prefix}.mid.attn_1.norm.weight": (c,), f"{prefix}.mid.attn_1.norm.bias": (c,)})
        for name in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.mid.attn_1.{name}", c, c, 1, 1)
        resnet(f"{prefix}.mid.block_2", c, c)

    vae, top = "first_stage_model", CHANNELS[-1]
    conv(f"{vae}.encoder.conv_in", CHANNELS[0], 1, 3, 3)
    block_in = CHANNELS[0]
    for level, c in enumerate(CHANNELS):
        for j in range(LAYERS):
            resnet(f"{vae}.encoder.down.{level}.block.{j}", block_in, c)
            block_in = c
        if level != len(CHANNELS) - 1:
            conv(f"{vae}.encoder.down.{level}.downsample.conv", c, c, 3, 3)
    middle(f"{vae}.encoder", top)
    shapes.update({f"{vae}.encoder.norm_out.weight": (top,), f"{vae}.encoder.norm_out.bias": (top,)})
    conv(f"{vae}.encoder.conv_out", 2 * LATENT, top, 3, 3)
    conv(f"{vae}.quant_conv", 2 * LATENT, 2 * LATENT, 1, 1)
    conv(f"{vae}.post_quant_conv", LATENT, LATENT, 1, 1)
    conv(f"{vae}.decoder.conv_in", top, LATENT, 3, 3)
    middle(f"{vae}.decoder", top)
    block_in = top
    for level in reversed(range(len(CHANNELS))):
        for j in range(LAYERS + 1):
            resnet(f"{vae}.decoder.up.{level}.block.{j}", block_in, CHANNELS[level])
            block_in = CHANNELS[level]
        if level != 0:
            conv(f"{vae}.decoder.up.{level}.upsample.conv", block_in, block_in, 3, 3)
    shapes.update({f"{vae}.decoder.norm_out.weight": (CHANNELS[0],), f"{vae}.decoder.norm_out.bias": (CHANNELS[0],)})
    conv(f"{vae}.decoder.conv_out", 1, CHANNELS[0], 3, 3)

    voc, ch = f"{vae}.vocoder", VOCODER["upsample_initial_channel"]
    conv(f"{voc}.conv_pre", ch, VOCODER["model_in_dim"], 7)
    for i, (rate, kernel) in enumerate(zip(VOCODER["upsample_rates"], VOCODER["upsample_kernel_sizes"])):
        shapes.update({f"{voc}.ups.{i}.weight": (ch // 2**i, ch // 2 ** (i + 1), kernel), f"{voc}.ups.{i}.bias": (ch // 2 ** (i + 1),)})
        for j, kernel_size in enumerate(VOCODER["resblock_kernel_sizes"]):
            for convs in ("convs1", "convs2"):
                for n in range(3):
                    conv(f"{voc}.resblocks.{i * 2 + j}.{convs}.{n}", ch // 2 ** (i + 1), ch // 2 ** (i + 1), kernel_size)
    conv(f"{voc}.conv_post", 1, ch // 2 ** len(VOCODER["upsample_rates"]), 7)

    sd = {k: 0.3 * torch.randn(shape, generator=g) for k, shape in shapes.items()}
    if weight_norm_vocoder:  # a vocoder saved before `remove_weight_norm`: (g, v) per convolution
        for key in [k for k in sd if k.startswith(voc) and k.endswith(".weight")]:
            v = sd.pop(key)
            sd[key[: -len("weight")] + "weight_v"] = v
            sd[key[: -len("weight")] + "weight_g"] = torch.rand((v.shape[0],) + (1,) * (v.ndim - 1), generator=g) + 0.5
    sd["scale_factor"] = torch.tensor(SCALE_FACTOR)
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(16, LATENT, 3, 3, generator=g)
    sd["cond_stage_model.model.logit_scale_a"] = torch.tensor(2.6)
    sd["betas"] = torch.linspace(0.0015, 0.0195, 10)
    sd["posterior_mean_coef1"] = torch.rand(10, generator=g)
    return sd


def convert(sd, **kwargs):
    return convert_audioldm_state_dict(sd, vae_config=VAE, vocoder_config=VOCODER, mel_config=MEL, **kwargs)


def test_every_audioldm_key_is_converted_or_dropped_and_lands_where_its_module_is():
    sd = audioldm_state_dict()
    result = convert(sd)
    assert sorted(result.converted_keys + result.dropped_keys) == sorted(sd)
    assert sorted(result.dropped_keys) == ["betas", "cond_stage_model.model.logit_scale_a",
                                           "model.diffusion_model.input_blocks.0.0.weight", "posterior_mean_coef1"]  # fmt: skip
    vae, vocoder = result.model.vae, result.model.vocoder
    fs = "first_stage_model."
    # the decoder's levels run the other way in diffusers; the middle attention's 1×1 convolutions become linear layers
    torch.testing.assert_close(vae.decoder.up_blocks[2].resnets[1].conv1.weight, sd[fs + "decoder.up.0.block.1.conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(vae.decoder.up_blocks[0].upsamplers[0].conv.bias, sd[fs + "decoder.up.2.upsample.conv.bias"], rtol=0, atol=0)
    torch.testing.assert_close(vae.encoder.down_blocks[1].resnets[0].conv_shortcut.weight, sd[fs + "encoder.down.1.block.0.nin_shortcut.weight"], rtol=0, atol=0)
    torch.testing.assert_close(vae.encoder.mid_block.attentions[0].to_q.weight, sd[fs + "encoder.mid.attn_1.q.weight"][:, :, 0, 0], rtol=0, atol=0)
    torch.testing.assert_close(vae.decoder.mid_block.attentions[0].to_out[0].bias, sd[fs + "decoder.mid.attn_1.proj_out.bias"], rtol=0, atol=0)
    torch.testing.assert_close(vae.decoder.conv_norm_out.weight, sd[fs + "decoder.norm_out.weight"], rtol=0, atol=0)
    torch.testing.assert_close(vocoder.upsampler[1].weight, sd[fs + "vocoder.ups.1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(vocoder.resblocks[3].convs2[2].weight, sd[fs + "vocoder.resblocks.3.convs2.2.weight"], rtol=0, atol=0)


def test_the_checkpoints_scale_factor_makes_standardize_the_teachers_latent_space():
    model = convert(audioldm_state_dict()).model
    assert model.config.latents_mean is None and model.config.scaling_factor == 0.25  # the teacher's σ_data
    z = torch.randn(2, LATENT, 3, 4, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model.standardize(z), SCALE_FACTOR * z)  # SoundCTM's get_first_stage_encoding
    torch.testing.assert_close(model.unstandardize(z), z / SCALE_FACTOR)  # and its decode_first_stage


def test_a_weight_normed_vocoder_is_folded():
    sd = audioldm_state_dict(weight_norm_vocoder=True)
    result = convert(sd)
    assert sorted(result.converted_keys + result.dropped_keys) == sorted(sd)
    g, v = sd["first_stage_model.vocoder.conv_pre.weight_g"], sd["first_stage_model.vocoder.conv_pre.weight_v"]
    torch.testing.assert_close(result.model.vocoder.conv_pre.weight, g * v / v.norm(dim=(1, 2), keepdim=True))


def test_a_truncated_a_misshaped_or_a_foreign_key_fails_naming_it():
    sd = audioldm_state_dict()
    missing = "first_stage_model.decoder.up.1.block.0.norm2.bias"
    with pytest.raises(ValueError, match=rf"audioldm-s-full.ckpt: no key '{missing}'"):
        convert_audioldm_state_dict({k: v for k, v in sd.items() if k != missing}, "audioldm-s-full.ckpt",
                                    vae_config=VAE, vocoder_config=VOCODER, mel_config=MEL)  # fmt: skip
    key = "first_stage_model.vocoder.conv_post.weight"
    with pytest.raises(ValueError, match=rf"'{key}' has shape \(1, 2, 5\)"):
        convert({**sd, key: torch.zeros(1, 2, 5)})
    with pytest.raises(ValueError, match="'first_stage_model.loss.logvar' is not a parameter"):
        convert({**sd, "first_stage_model.loss.logvar": torch.zeros(())})
    with pytest.raises(ValueError, match="'optimizer_state' is not a key"):
        convert({**sd, "optimizer_state": torch.zeros(())})
    with pytest.raises(ValueError, match="'scale_factor'"):
        convert({k: v for k, v in sd.items() if k != "scale_factor"})


def test_a_lightning_checkpoint_file_converts_with_weights_only_loading(tmp_path):
    sd = audioldm_state_dict()
    path = tmp_path / "audioldm-s-full.ckpt"
    torch.save({"epoch": 3, "global_step": 1000, "state_dict": sd}, path)
    result = convert_audioldm_checkpoint(path, vae_config=VAE, vocoder_config=VOCODER, mel_config=MEL)
    torch.testing.assert_close(result.model.vae.quant_conv.weight, sd["first_stage_model.quant_conv.weight"], rtol=0, atol=0)
    del sd["first_stage_model.encoder.conv_in.bias"]
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ValueError, match=rf"{path}: no key 'first_stage_model.encoder.conv_in.bias'"):
        convert_audioldm_checkpoint(path, vae_config=VAE, vocoder_config=VOCODER, mel_config=MEL)
