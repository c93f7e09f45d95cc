"""The SoundCTM-UNet student (16 kHz family) and the conversion of the authors' UNet checkpoints (Sony/soundctm), on
tiny UNets with TANGO's block types built in code under fixed seeds, and state dicts in the authors' layouts."""

import logging

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from tiny_models import tiny_text_encoder

from hub.unet16k_checkpoints import (
    LATENT_SHAPE,
    TANGO_UNET_CONFIG,
    compare_text_encoder,
    detect_layout,
    load_student,
    load_student_ema,
    load_teacher,
    student_ema_from_state_dict,
    student_from_state_dict,
    tango_unet_config,
    teacher_from_state_dict,
)
from soundctm import SoundCTMUNet2DConditionModel

S_KEYS = {f"s_time_embedding.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
CROSS = 12
# TANGO's UNet (block types, linear projection, upcast attention, 8 latent channels), small.
TINY = tango_unet_config(
    sample_size=(16, 8),
    block_out_channels=[8, 16, 16, 16],
    attention_head_dim=[2, 2, 4, 4],
    layers_per_block=1,
    norm_num_groups=4,
    cross_attention_dim=CROSS,
)


def perturb(model, seed):
    """Random offsets on every weight, so that no two tensors (norm scales of 1, zero biases) are alike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return perturb(UNet2DConditionModel(**TINY), 1)


@pytest.fixture(scope="module")
def student(teacher):
    torch.manual_seed(2)
    return perturb(SoundCTMUNet2DConditionModel.from_teacher(teacher), 3)


def inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.tensor([0.3, 8.0, 60.0, 1.0])[:batch]
    s = torch.tensor([0.1, 2.0, 0.002, 0.5])[:batch]
    return dict(
        sample=torch.randn(batch, 8, 16, 8, generator=g),
        timestep=sigma.log() / 4,
        target_timestep=s.log() / 4,
        guidance_scale=torch.tensor([2.0, 4.5, 3.0, 5.0])[:batch],
        encoder_hidden_states=torch.randn(batch, 5, CROSS, generator=g),
        encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]][:batch]).bool(),
    )


def run(model, x):
    x = dict(x)
    sample = x.pop("sample")
    with torch.no_grad():
        return model(sample, return_dict=True, **x).sample


# ------------------------------------------------------------------------------------------------ the student
def test_student_from_teacher_has_every_teacher_weight_and_only_s_time_embedding_new(teacher):
    torch.manual_seed(0)
    student = SoundCTMUNet2DConditionModel.from_teacher(teacher)
    teacher_sd, student_sd = teacher.state_dict(), student.state_dict()
    assert set(student_sd) - set(teacher_sd) == S_KEYS and set(teacher_sd) <= set(student_sd)
    assert all(torch.equal(student_sd[k], v) for k, v in teacher_sd.items())
    # s_time_embedding: PyTorch's default Linear init (as the authors' name-matching copy leaves it), not zeros
    assert all(student_sd[k].abs().sum() > 0 for k in S_KEYS)
    assert student.config.is_student is True and "is_student" not in teacher.config
    assert student.s_time_embedding.linear_2.out_features == 4 * TINY["block_out_channels"][0]
    assert not list(student.s_time_proj.parameters())
    with pytest.raises(TypeError, match="not a student"):
        SoundCTMUNet2DConditionModel.from_teacher(student)


def test_s_and_omega_change_the_output_and_each_sample_gets_its_own(student):
    x = inputs(batch=2)
    out = run(student, x)
    assert out.shape == x["sample"].shape and torch.isfinite(out).all()
    for key in ("target_timestep", "guidance_scale"):
        other = dict(x, **{key: x[key] + 0.5})
        assert (run(student, other) - out).abs().max() > 1e-3, key
    # a batch with two different ω (and t, s, masks) is the two single-sample calls
    singles = torch.cat([run(student, {k: v[i : i + 1] for k, v in x.items()}) for i in range(2)])
    torch.testing.assert_close(out, singles, atol=1e-5, rtol=0)
    # the DiT's name for the input, as the trainer calls the student
    with torch.no_grad():
        by_name = student(hidden_states=x["sample"], **{k: v for k, v in x.items() if k != "sample"}).sample
    torch.testing.assert_close(by_name, out, atol=0, rtol=0)
    # scalars broadcast: one ω for the batch equals that ω repeated
    same = dict(x, guidance_scale=torch.full((2,), 3.0))
    torch.testing.assert_close(run(student, dict(x, guidance_scale=3.0)), run(student, same), atol=0, rtol=0)


def test_encoder_attention_mask_hides_padding_and_all_true_is_no_mask(student):
    x = inputs(batch=2)
    padded = x["encoder_hidden_states"].clone()
    padded[1, 2:] = 100.0  # the masked tokens of sample 1
    torch.testing.assert_close(run(student, dict(x, encoder_hidden_states=padded)), run(student, x), atol=1e-5, rtol=0)
    full = dict(x, encoder_attention_mask=torch.ones(2, 5))
    torch.testing.assert_close(run(student, full), run(student, dict(x, encoder_attention_mask=None)), atol=0, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(target_timestep=None), "target_timestep"),
        (dict(guidance_scale=None), "guidance_scale"),
        (dict(guidance_scale=torch.ones(3)), "guidance_scale must be a scalar or have shape \\(2,\\)"),
        (dict(timestep=torch.ones(4)), "timestep must be"),
        (dict(encoder_hidden_states=torch.zeros(2, 5, CROSS + 1)), "encoder_hidden_states must have shape"),
        (dict(encoder_attention_mask=torch.ones(2, 4)), "encoder_attention_mask must have shape"),
        (dict(sample=torch.zeros(2, 4, 16, 8)), "sample must have shape"),
        (dict(timestep=None), "timestep .* is required"),
        (dict(hidden_states=torch.zeros(2, 8, 16, 8)), "not both"),
    ],
)
def test_bad_inputs_are_value_errors_naming_the_argument(student, change, message):
    with pytest.raises(ValueError, match=message):
        run(student, dict(inputs(batch=2), **change))


def test_is_student_cannot_be_false_and_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="is_student=True"):
        SoundCTMUNet2DConditionModel(**TINY, is_student=False)
    with pytest.raises(ValueError, match="time_embedding_type"):
        SoundCTMUNet2DConditionModel(**dict(TINY, time_embedding_type="fourier"))


def test_save_load_round_trip_keeps_config_and_outputs(student, tmp_path, caplog):
    student.save_pretrained(tmp_path)
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            loaded = SoundCTMUNet2DConditionModel.from_pretrained(tmp_path)
    finally:
        diffusers_logging.disable_propagation()
    assert not [r for r in caplog.records if "config attributes" in r.getMessage()]  # is_student is a known key
    assert loaded.config.is_student is True and loaded.config.sample_size == [16, 8]
    x = inputs(batch=2)
    torch.testing.assert_close(run(loaded.eval(), x), run(student, x), atol=0, rtol=0)
    rebuilt = SoundCTMUNet2DConditionModel.from_config(loaded.config)
    assert rebuilt.config.is_student is True and set(rebuilt.state_dict()) == set(student.state_dict())


def test_gradient_checkpointing_gives_the_same_output_and_gradients(student):
    x = inputs(batch=2)

    def loss_and_grads(model):
        model.zero_grad()
        sample = x["sample"].clone().requires_grad_(True)
        out = model(sample, **{k: v for k, v in x.items() if k != "sample"}).sample
        out.square().mean().backward()
        return out.detach(), sample.grad, model.s_time_embedding.linear_1.weight.grad.clone(), model.conv_in.weight.grad.clone()

    model = SoundCTMUNet2DConditionModel.from_config(student.config)
    model.load_state_dict(student.state_dict())
    model.train()
    plain = loss_and_grads(model)
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed = loss_and_grads(model)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_tango_config_builds_the_full_size_student_on_the_meta_device():
    assert TANGO_UNET_CONFIG["sample_size"] == list(LATENT_SHAPE) == [256, 16]
    with torch.device("meta"):
        student = SoundCTMUNet2DConditionModel(**TANGO_UNET_CONFIG)
        teacher = UNet2DConditionModel(**TANGO_UNET_CONFIG)
    sd = student.state_dict()
    assert set(sd) - set(teacher.state_dict()) == S_KEYS
    assert sd["s_time_embedding.linear_1.weight"].shape == (1280, 320)
    assert sd["s_time_embedding.linear_2.weight"].shape == (1280, 1280)


# ------------------------------------------------------------------------------------------------ conversion
@pytest.fixture(scope="module")
def t5():
    return tiny_text_encoder("sequence", seed=4)[0]


@pytest.fixture(scope="module")
def authors_files(student, teacher, t5):
    """State dicts in the authors' layouts: their student and teacher `AudioDiffusionEDM` wrappers (UNet then the
    FLAN-T5 copy), and the EMA student's bare `ctm_unet.state_dict()`."""
    text = {f"text_encoder.{k}": v for k, v in t5.state_dict().items()}
    torch.manual_seed(5)
    ema = perturb(SoundCTMUNet2DConditionModel.from_teacher(teacher), 6)
    return dict(
        student={**{f"ctm_unet.{k}": v for k, v in student.state_dict().items()}, **text},
        student_ema=ema.state_dict(),
        teacher={**{f"unet.{k}": v for k, v in teacher.state_dict().items()}, **text},
        ema_model=ema,
    )


CONVERTERS = {"student": student_from_state_dict, "student_ema": student_ema_from_state_dict, "teacher": teacher_from_state_dict}


@pytest.mark.parametrize("kind", list(CONVERTERS))
def test_conversion_uses_every_key_and_reproduces_the_source_model(kind, authors_files, student, teacher, t5):
    source = authors_files[kind]
    assert detect_layout(source) == kind
    conv = CONVERTERS[kind](source, TINY)
    assert conv.kind == kind and conv.converted_keys + len(conv.dropped_keys) == len(source)
    assert all(k.startswith("text_encoder.") for k in conv.dropped_keys)
    assert len(conv.dropped_keys) == (0 if kind == "student_ema" else len(t5.state_dict()))
    expected_class = UNet2DConditionModel if kind == "teacher" else SoundCTMUNet2DConditionModel
    assert type(conv.model) is expected_class
    original = {"student": student, "student_ema": authors_files["ema_model"], "teacher": teacher}[kind]
    x = inputs(batch=2)
    if kind == "teacher":
        with torch.no_grad():
            got = conv.model(x["sample"], x["timestep"], x["encoder_hidden_states"]).sample
            want = original(x["sample"], x["timestep"], x["encoder_hidden_states"]).sample
    else:
        got, want = run(conv.model, x), run(original, x)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    if kind != "student_ema":
        assert compare_text_encoder(conv.text_encoder_state_dict, t5) == (True, 0.0)


def test_text_encoder_copy_that_differs_is_reported(authors_files, t5):
    conv = student_from_state_dict(authors_files["student"], TINY)
    changed = dict(conv.text_encoder_state_dict)
    key = next(iter(changed))
    changed[key] = changed[key] + 0.5
    same, diff = compare_text_encoder(changed, t5)
    assert not same and diff == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        compare_text_encoder({key: torch.zeros(1)}, t5)


@pytest.mark.parametrize("kind, prefix", [("student", "ctm_unet."), ("student_ema", ""), ("teacher", "unet.")])
def test_truncated_extra_and_misshaped_keys_are_errors_naming_the_key(kind, prefix, authors_files):
    source = authors_files[kind]
    gone = f"{prefix}up_blocks.1.attentions.0.proj_out.weight"
    with pytest.raises(ValueError, match=rf"no '{gone}'"):
        CONVERTERS[kind]({k: v for k, v in source.items() if k != gone}, TINY)
    extra = f"{prefix}mid_block.extra.weight"
    with pytest.raises(ValueError, match=rf"'{extra}' is not a parameter"):
        CONVERTERS[kind]({**source, extra: torch.zeros(1)}, TINY)
    wrong = f"{prefix}conv_in.weight"
    with pytest.raises(ValueError, match=rf"'{wrong}' has shape"):
        CONVERTERS[kind]({**source, wrong: torch.zeros(3, 3)}, TINY)
    if prefix:
        with pytest.raises(ValueError, match="'vae.decoder.weight' is neither"):
            CONVERTERS[kind]({**source, "vae.decoder.weight": torch.zeros(1)}, TINY)


@pytest.mark.parametrize(
    "given, as_kind, message",
    [
        ("student", "teacher", "the SoundCTM student .*read it with load_student"),
        ("student_ema", "teacher", "student's EMA.*load_student_ema"),
        ("teacher", "student", "the SoundCTM-UNet teacher.*load_teacher"),
        ("teacher", "student_ema", "load_teacher"),
        ("student", "student_ema", "load_student"),
    ],
)
def test_a_file_of_another_kind_is_refused_with_what_it_is(given, as_kind, message, authors_files):
    with pytest.raises(ValueError, match=message):
        CONVERTERS[as_kind](authors_files[given], TINY)


def test_a_bare_teacher_unet_is_not_a_student_ema(teacher):
    with pytest.raises(ValueError, match="without the student's 's_time_embedding"):
        student_ema_from_state_dict(teacher.state_dict(), TINY)


def test_files_are_read_weights_only(authors_files, tmp_path):
    paths = {}
    for kind, name in [("student", "pytorch_model.bin"), ("student_ema", "ema_0.999_030000.pt"), ("teacher", "pytorch_model_2_sigma_025.bin")]:
        paths[kind] = tmp_path / name
        torch.save(authors_files[kind], paths[kind])
    assert load_student(paths["student"], TINY).converted_keys == len(authors_files["student_ema"])
    assert load_student_ema(paths["student_ema"], TINY).kind == "student_ema"
    assert type(load_teacher(paths["teacher"], TINY).model) is UNet2DConditionModel
    with pytest.raises(ValueError, match=rf"{paths['student']}.*load_student"):
        load_teacher(paths["student"], TINY)
    with pytest.raises(FileNotFoundError):
        load_student(tmp_path / "missing.bin", TINY)
