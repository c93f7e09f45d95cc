"""`python -m hub.convert --variant unet16k`: the authors' 16 kHz release (Sony/soundctm) → OUTPUT/student and
OUTPUT/teacher pipeline folders, on tiny stand-ins of the authors' files written in their Hub layout (UNet state dicts
with the authors' `ctm_unet.` / `unet.` prefixes and `text_encoder.*` copies, an AudioLDM Lightning checkpoint)."""

import json
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel
from test_mel_vocoder import audioldm_state_dict
from tiny_models import MEL, VAE, VOCODER, tiny_text_encoder, tiny_unet

from hub.audioldm_checkpoint import convert_audioldm_state_dict
from hub.convert import main as convert_main
from hub.convert_unet16k import AUDIOLDM_FILE, STUDENT_ROWS, TEACHER_ROW
from hub.unet16k_checkpoints import STUDENT_EMA_FILE, STUDENT_FILE, TEACHER_FILE, student_ema_from_state_dict, student_from_state_dict
from soundctm import CTMScheduler, EDMHeunScheduler, SoundCTMPipeline, SoundCTMUNet2DConditionModel

TABLE_FIGURES = ["1.71 | 1.28 | 8.11 | 0.46", "2.08 | 1.26 | 7.13 | 0.43", "1.90 | 1.24 | 7.26 | 0.45",
                 "1.72 | 1.22 | 7.37 | 0.45", "1.45 | 1.20 | 7.98 | 0.46", "1.38 | 1.19 | 8.24 | 0.46"]  # fmt: skip


def _config(model) -> dict:
    return {k: v for k, v in model.config.items() if not k.startswith("_") and k != "is_student"}


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    """The authors' four files in their Hub layout, the tiny T5 folder, and the state dicts they hold."""
    root = tmp_path_factory.mktemp("unet16k")
    t5, tokenizer, width = tiny_text_encoder("sequence", seed=3)
    teacher = tiny_unet(False, width, seed=0)
    student = tiny_unet(True, width, seed=1)
    ema = tiny_unet(True, width, seed=2)
    text = {f"text_encoder.{k}": v for k, v in t5.state_dict().items()}
    sds = {
        TEACHER_FILE: {**{f"unet.{k}": v for k, v in teacher.state_dict().items()}, **text},
        STUDENT_FILE: {**{f"ctm_unet.{k}": v for k, v in student.state_dict().items()}, **text},
        STUDENT_EMA_FILE: ema.state_dict(),
        AUDIOLDM_FILE: audioldm_state_dict(seed=4),
    }
    src = root / "soundctm"
    for relpath, sd in sds.items():
        (src / relpath).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": sd} if relpath == AUDIOLDM_FILE else sd, src / relpath)
    t5_dir = root / "flan-t5"
    t5.save_pretrained(t5_dir)
    tokenizer.save_pretrained(t5_dir)
    (root / "unet.json").write_text(json.dumps(_config(teacher)))
    (root / "audioldm.json").write_text(json.dumps(dict(vae_config=VAE, vocoder_config=VOCODER, mel_config=MEL)))
    return dict(root=root, src=src, t5_dir=t5_dir, t5=t5, tokenizer=tokenizer, sds=sds, unet_config=_config(teacher))


def args(authors, output, *extra, src=None):
    return ["--variant", "unet16k", "--output", str(output), "--source", str(src or authors["src"]),
            "--text-encoder", str(authors["t5_dir"]), "--unet-config", str(authors["root"] / "unet.json"),
            "--audioldm-config", str(authors["root"] / "audioldm.json"), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def converted(authors):
    output = authors["root"] / "out"
    assert convert_main(args(authors, output)) == 0
    return output


def generate(pipe, steps=1):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a dog barks", num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np").audios


def test_both_folders_hold_safetensors_only_and_cards_with_the_papers_table_2(converted):
    assert sorted(p.name for p in converted.iterdir()) == ["student", "teacher"]
    for name in ("student", "teacher"):
        folder = converted / name
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        weights = [f for f in files if f.startswith(("transformer/", "vae/", "text_encoder/")) and not f.endswith((".json", ".py"))]
        assert weights and all(f.endswith(".safetensors") for f in weights), weights
        assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
        index = json.loads((folder / "model_index.json").read_text())
        assert index["guidance_scale"] == 3.5 and index["text_embedding"] == "sequence"
        card = (folder / "README.md").read_text()
        assert "license: cc-by-4.0" in card and "Sony/soundctm" in card and "--variant unet16k" in card
        assert TEACHER_ROW.strip() in card and "AudioCaps test set" in card
    student_card = (converted / "student" / "README.md").read_text()
    assert all(figures in student_card for figures in TABLE_FIGURES)
    assert all(row in student_card for row in STUDENT_ROWS.strip().splitlines())
    assert STUDENT_EMA_FILE in student_card and "CTM student" in student_card
    teacher_card = (converted / "teacher" / "README.md").read_text()
    assert TEACHER_FILE in teacher_card and "EDM teacher" in teacher_card and "2.08" not in teacher_card


def in_memory_pipeline(authors, student_sd, converter=student_ema_from_state_dict):
    vae = convert_audioldm_state_dict(authors["sds"][AUDIOLDM_FILE], vae_config=VAE, vocoder_config=VOCODER, mel_config=MEL, sigma_data=0.25).model
    unet = converter(student_sd, authors["unet_config"]).model
    return SoundCTMPipeline(vae=vae, text_encoder=authors["t5"], tokenizer=authors["tokenizer"], transformer=unet,
                            scheduler=CTMScheduler(sigma_data=0.25), text_embedding="sequence", guidance_scale=3.5)  # fmt: skip


def test_the_student_folder_samples_as_the_pipeline_built_in_memory_from_the_same_files(authors, converted):
    pipe = SoundCTMPipeline.from_pretrained(converted / "student")
    assert type(pipe.transformer) is SoundCTMUNet2DConditionModel and isinstance(pipe.scheduler, CTMScheduler)
    assert pipe.scheduler.config.sigma_data == 0.25 and pipe.vae.config.scaling_factor == 0.25
    audio = generate(pipe)
    assert audio.shape[-1] == 8 * MEL["stft_hop_length"] * 4 and abs(audio).max() > 0
    memory = in_memory_pipeline(authors, authors["sds"][STUDENT_EMA_FILE])
    for name in ("transformer", "vae", "text_encoder"):  # bit-identical weights and buffers
        got, want = getattr(pipe, name).state_dict(), getattr(memory, name).state_dict()
        assert set(got) == set(want) and all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    # the same sound; float32 rounding differs slightly between the loaded and the in-memory modules (≈2e-6 seen)
    torch.testing.assert_close(torch.from_numpy(audio), torch.from_numpy(generate(memory)), rtol=0, atol=1e-5)


def test_the_teacher_folder_is_a_plain_diffusers_unet_with_edm_heun(authors, converted):
    pipe = SoundCTMPipeline.from_pretrained(converted / "teacher")
    assert type(pipe.transformer) is UNet2DConditionModel
    assert isinstance(pipe.scheduler, EDMHeunScheduler) and pipe.scheduler.config.sigma_data == 0.25
    want = {k[len("unet."):]: v for k, v in authors["sds"][TEACHER_FILE].items() if k.startswith("unet.")}
    got = pipe.transformer.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert generate(pipe, steps=2).shape[-1] == 8 * MEL["stft_hop_length"] * 4


def test_flat_files_and_the_online_student_weights(authors, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for relpath in (TEACHER_FILE, STUDENT_FILE, AUDIOLDM_FILE):
        shutil.copy(authors["src"] / relpath, flat)
    assert convert_main(args(authors, tmp_path / "out", "--student-weights", "online", src=flat)) == 0
    audio = generate(SoundCTMPipeline.from_pretrained(tmp_path / "out" / "student"))
    expected = generate(in_memory_pipeline(authors, authors["sds"][STUDENT_FILE], student_from_state_dict))
    torch.testing.assert_close(torch.from_numpy(audio), torch.from_numpy(expected), rtol=0, atol=1e-5)
    assert STUDENT_FILE in (tmp_path / "out" / "student" / "README.md").read_text()


@pytest.fixture
def src_copy(authors, tmp_path):
    shutil.copytree(authors["src"], tmp_path / "src")
    return tmp_path / "src"


def fails(authors, src, capsys, *extra):
    output = src.parent / "out"
    assert convert_main(args(authors, output, *extra, src=src)) == 2
    assert not output.exists() and not [p for p in src.parent.iterdir() if p.name.startswith(".out")]
    return capsys.readouterr().err


@pytest.mark.parametrize("relpath", [TEACHER_FILE, STUDENT_EMA_FILE, AUDIOLDM_FILE])
def test_a_missing_file_is_named_and_nothing_is_written(relpath, authors, src_copy, capsys):
    (src_copy / relpath).unlink()
    assert relpath in fails(authors, src_copy, capsys)


def test_a_dit_checkpoint_or_a_file_of_another_kind_is_refused(authors, src_copy, capsys):
    dit = {"model.model.transformer.layers.0.self_attn.to_qkv.weight": torch.zeros(3, 3), "conditioner.x": torch.zeros(1)}
    torch.save(dit, src_copy / TEACHER_FILE)
    err = fails(authors, src_copy, capsys)
    assert TEACHER_FILE in err and "not the SoundCTM-UNet teacher" in err
    shutil.copy(src_copy / STUDENT_FILE, src_copy / TEACHER_FILE)  # the student's file where the teacher's belongs
    err = fails(authors, src_copy, capsys)
    assert TEACHER_FILE in err and "load_student" in err
    shutil.copy(src_copy / AUDIOLDM_FILE, src_copy / STUDENT_EMA_FILE)  # the AudioLDM checkpoint as the EMA student
    shutil.copy(authors["src"] / TEACHER_FILE, src_copy / TEACHER_FILE)
    assert STUDENT_EMA_FILE in fails(authors, src_copy, capsys)


def test_a_text_encoder_of_another_width_is_named_against_the_unet_file(authors, src_copy, capsys):
    t5, tokenizer, _ = tiny_text_encoder("sequence", seed=3)
    config = t5.config
    config.d_model = 8
    other = type(t5)(config)
    folder = src_copy.parent / "t5-8"
    other.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    output = src_copy.parent / "out"
    argv = args(authors, output, src=src_copy)
    argv[argv.index("--text-encoder") + 1] = str(folder)
    assert convert_main(argv) == 2
    err = capsys.readouterr().err
    assert TEACHER_FILE in err and "8-d (d_model)" in err and not output.exists()


def test_offline_without_a_text_encoder_folder_says_to_pass_one(authors, src_copy, capsys, monkeypatch):
    import hub.convert_unet16k as module

    monkeypatch.setattr(module, "hub_reachable", lambda: False)
    monkeypatch.setattr(module, "TEXT_ENCODER_REPO", "soundctm-tests/no-such-t5")  # surely not in any local cache
    output = src_copy.parent / "out"
    code = convert_main(["--variant", "unet16k", "--source", str(src_copy), "--output", str(output)])
    assert code == 2 and not output.exists()
    assert "pass --text-encoder DIR" in capsys.readouterr().err
