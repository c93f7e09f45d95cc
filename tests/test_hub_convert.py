"""`python -m hub.convert`: the authors' released files (tiny stand-ins in their exact layouts, see
test_hub_fixtures.py) become a complete SoundCTMPipeline folder whose modules hold exactly the source tensors, which
loads three ways and generates, and bad input fails with the file and the key named, leaving nothing behind."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from test_hub_fixtures import (  # noqa: F401  (fixtures)
    ROOT,
    SAMPLE_SIZE,
    VARIANT_FILES,
    authors_files,
    convert_args,
    converted,
    subprocess_env,
    weight_normed_vae,
)
from transformers import RobertaConfig, RobertaModel

from hub.authors_checkpoints import fold_weight_norm, load_pickle
from hub.convert import main as convert_main
from soundctm import SoundCTMPipeline

CODE_DIR = str(ROOT / "pipelines" / "soundctm")


def generate(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a dog barks", num_inference_steps=2, nu=2.0, generator=torch.Generator().manual_seed(0)).audios


def test_converted_folder_has_safetensors_configs_code_card_and_an_fp16_variant(converted):  # noqa: F811
    for variant, folder in converted.items():
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
        for component, weights in (("transformer", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
            assert {f"{component}/{weights}.safetensors", f"{component}/{weights}.fp16.safetensors"} <= files
        assert {"README.md", "pipeline.py", "transformer/transformer_soundctm_dit.py", "vae/autoencoder_gaussian_dac.py",
                "scheduler/scheduling_ctm.py", "tokenizer/tokenizer_config.json"} <= files
        assert not [p for p in folder.parent.iterdir() if p.name != folder.name], "temporary folders left behind"
        index = json.loads((folder / "model_index.json").read_text())
        assert index["text_embedding"] == {"ac_v1_iclr": "projected", "ac_v2": "pooled"}[variant]
        assert index["text_encoder"] == ["transformers", "ClapTextModelWithProjection"]
        assert json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 77
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        authors_sampler = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "rho": 7.0, "gamma": 0.0}  # dit.yaml, demo.py
        assert scheduler["_class_name"] == "CTMScheduler" and {k: scheduler[k] for k in authors_sampler} == authors_sampler


def test_converted_modules_hold_the_source_tensors(authors_files, converted):  # noqa: F811
    for variant, folder in converted.items():
        src = authors_files[variant]
        pipe = SoundCTMPipeline.from_pretrained(folder)
        dit = pipe.transformer
        assert dit.config.is_student and dit.config.sample_size == SAMPLE_SIZE
        torch.testing.assert_close(dit.transformer_blocks[1].attn2.to_kv.weight, src["dit"]["transformer.layers.1.cross_attn.to_kv.weight"], rtol=0, atol=0)
        torch.testing.assert_close(dit.time_proj.weight, src["dit"]["timestep_features.weight"], rtol=0, atol=0)
        torch.testing.assert_close(dit.context_embedding.linear_2.weight, src["dit"]["to_cond_embed.2.weight"], rtol=0, atol=0)

        text = pipe.text_encoder.state_dict()
        torch.testing.assert_close(text["text_model.encoder.layer.1.output.dense.weight"], src["clap"]["text_branch.encoder.layer.1.output.dense.weight"], rtol=0, atol=0)
        torch.testing.assert_close(text["text_projection.linear2.bias"], src["clap"]["text_projection.2.bias"], rtol=0, atol=0)

        # VAE: every weight-normed convolution folds to what torch's remove_weight_norm gives
        unnormed = weight_normed_vae()  # the same weights as the written file (seeded)
        for module in unnormed.modules():
            if hasattr(module, "weight_g"):
                torch.nn.utils.remove_weight_norm(module)
        folded = unnormed.state_dict()
        ours = pipe.vae.state_dict()
        assert set(ours) == set(folded)
        for key, value in folded.items():
            torch.testing.assert_close(ours[key], value, rtol=1e-6, atol=1e-7, msg=key)
        assert pipe.vae.config.latents_mean == pytest.approx(src["z_stats"]["z_mean"].tolist())
        assert pipe.vae.config.latents_std == pytest.approx(src["z_stats"]["z_std"].tolist())
        assert pipe.vae.config.scaling_factor == 0.5


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_norm_folding_equals_torch_remove_weight_norm(transposed):
    torch.manual_seed(0)
    conv = (torch.nn.ConvTranspose1d if transposed else torch.nn.Conv1d)(6, 4, kernel_size=5)
    torch.nn.utils.weight_norm(conv)  # dim 0: the input channel of a transposed convolution
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)
    ours = fold_weight_norm(conv.weight_g, conv.weight_v)
    torch.nn.utils.remove_weight_norm(conv)
    torch.testing.assert_close(ours, conv.weight, rtol=1e-6, atol=1e-7)


def test_text_embedding_of_each_variant_is_the_authors_clap_vector(authors_files, converted):  # noqa: F811
    """laion-clap: RobertaModel pooler output, projected (v1) or not (v2), L2-normalised; prompts padded to 77."""
    for variant, folder in converted.items():
        src = authors_files[variant]
        pipe = SoundCTMPipeline.from_pretrained(folder)
        cfg = json.loads((src["root"] / "text_config.json").read_text())
        roberta = RobertaModel(RobertaConfig(**{k: cfg[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                                                     "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                                                     "layer_norm_eps", "pad_token_id")})).eval()
        roberta.load_state_dict({k[len("text_branch."):]: v for k, v in src["clap"].items()
                                 if k.startswith("text_branch.") and "position_ids" not in k})
        prompts = ["a dog barks", "", "rain falls on a roof " * 30]
        batch = pipe.tokenizer(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            pooled = roberta(**batch).pooler_output
            if variant == "ac_v1_iclr":
                c = src["clap"]
                pooled = F.linear(F.relu(F.linear(pooled, c["text_projection.0.weight"], c["text_projection.0.bias"])),
                                  c["text_projection.2.weight"], c["text_projection.2.bias"])
        expected = F.normalize(pooled, dim=-1)
        torch.testing.assert_close(pipe.encode_text(prompts, torch.device("cpu"))[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_converted_pipeline_loads_three_ways_and_generates_the_same_sound(converted, tmp_path):  # noqa: F811
    expected = {}
    for variant, folder in converted.items():
        audio = generate(SoundCTMPipeline.from_pretrained(folder))
        assert audio.shape == (1, 1, SAMPLE_SIZE * 8) and np.isfinite(audio).all() and np.abs(audio).max() > 1e-4
        custom = DiffusionPipeline.from_pretrained(folder, custom_pipeline=CODE_DIR, trust_remote_code=True)
        np.testing.assert_allclose(generate(custom), audio, rtol=1e-5, atol=1e-6)
        half = SoundCTMPipeline.from_pretrained(folder, variant="fp16", dtype=torch.float16)
        assert half.transformer.dtype == torch.float16 and half.text_encoder.dtype == torch.float16
        for name, value in custom.transformer.state_dict().items():
            torch.testing.assert_close(half.transformer.state_dict()[name], value.half(), rtol=0, atol=0)
        assert np.isfinite(generate(half)).all()
        np.save(tmp_path / f"{variant}.npy", audio)
        expected[variant] = str(folder)
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        for variant, folder in {expected!r}.items():
            pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
            pipe.set_progress_bar_config(disable=True)
            audio = pipe("a dog barks", num_inference_steps=2, nu=2.0, generator=torch.Generator().manual_seed(0)).audios
            np.testing.assert_allclose(audio, np.load(f"{tmp_path}/{{variant}}.npy"), rtol=1e-5, atol=1e-6)
        assert not any(m == "soundctm" or m.startswith("soundctm.") for m in sys.modules), "soundctm was imported"
        print("OK", type(pipe).__module__)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK diffusers_modules" in result.stdout


def test_soundctm_generate_writes_a_wav_with_a_converted_folder(converted, tmp_path, capsys):  # noqa: F811
    """The README's second command: `soundctm generate PROMPT --model <converted folder>`."""
    import soundfile as sf

    from soundctm.cli import main as soundctm_main

    out = tmp_path / "dog.wav"
    assert soundctm_main(["generate", "a dog barks", "--model", str(converted["ac_v2"]), "--steps", "1", "--seed", "0",
                          "-o", str(out), "-q"]) == 0
    audio, rate = sf.read(out)
    assert rate == 44100 and audio.shape == (SAMPLE_SIZE * 8,) and np.abs(audio).max() > 0


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def files_copy(authors_files, tmp_path):  # noqa: F811
    """A private copy of the ac_v2 stand-in files that a test may damage."""
    shutil.copytree(authors_files["ac_v2"]["root"], tmp_path / "src")
    return {**authors_files["ac_v2"], "root": tmp_path / "src", "tokenizer_dir": tmp_path / "src" / "roberta-tokenizer"}


def convert_fails(files, capsys, *extra, variant="ac_v2"):
    """Runs the converter expecting failure; returns its error message. Nothing may be written."""
    output = files["root"].parent / "out"
    assert convert_main(convert_args(files, variant, output) + list(extra)) == 2
    assert not output.exists()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".out.")], "a temporary folder was left behind"
    return capsys.readouterr().err


CKPT = "model_checkpoints/soundctm/ac_v2_ema_0999_030000.pt"


def test_unknown_variant_is_refused_with_the_allowed_ones(files_copy, capsys):
    with pytest.raises(SystemExit):
        convert_main(convert_args(files_copy, "ac_v3", files_copy["root"].parent / "out"))
    assert "invalid choice: 'ac_v3'" in capsys.readouterr().err
    from hub.convert import build_pipeline

    with pytest.raises(ValueError, match=r"variant must be one of \['ac_v1_iclr', 'ac_v2', 'as_ac_v2'\]"):
        build_pipeline("ac_v3", source=str(files_copy["root"]))


def test_missing_file_is_named_with_the_flag_that_supplies_it(files_copy, capsys):
    (files_copy["root"] / "model_checkpoints/soundctm/z_stats.pth").unlink()
    err = convert_fails(files_copy, capsys)
    assert "latent statistics not found" in err and "z_stats.pth" in err and "--z-stats" in err


def test_truncated_checkpoint_is_named(files_copy, capsys):
    path = files_copy["root"] / CKPT
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    err = convert_fails(files_copy, capsys)
    assert f"{path}: SoundCTM checkpoint is not a readable PyTorch file (truncated or corrupt?)" in err


def test_checkpoint_of_another_model_is_named(files_copy, capsys):
    clap = files_copy["root"] / "utils_checkpoints/clap/630k-audioset-best.pt"
    err = convert_fails(files_copy, capsys, "--checkpoint", str(clap))
    assert f"{clap}: 'text_branch." in err and "not a SoundCTM-DiT SA_EDM checkpoint" in err
    ckpt = files_copy["root"] / CKPT
    err = convert_fails(files_copy, capsys, "--vae-weights", str(ckpt))
    assert f"{ckpt}: expected audiotools'" in err
    err = convert_fails(files_copy, capsys, "--clap-checkpoint", str(ckpt))
    assert f"{ckpt}: no key 'text_branch.embeddings.word_embeddings.weight'" in err
    weights = files_copy["root"] / "utils_checkpoints/vae/gaussiandac/weights.pth"
    dac = torch.load(weights, weights_only=True)
    dac["metadata"]["kwargs"]["n_codebooks"] = 9  # a quantised DAC, not the Gaussian VAE
    torch.save(dac, weights)
    err = convert_fails(files_copy, capsys)
    assert f"{weights}: metadata['kwargs'] has 'n_codebooks'" in err


def test_unknown_key_and_shape_mismatch_name_the_file_and_the_key(files_copy, capsys):
    ckpt = files_copy["root"] / CKPT
    sd = torch.load(ckpt, weights_only=True)
    torch.save({**sd, "dit.transformer.layers.0.conformer.weight": torch.zeros(1)}, ckpt)
    err = convert_fails(files_copy, capsys)
    assert f"{ckpt}: dit.transformer.layers.0.conformer.weight" in err
    torch.save(sd, ckpt)
    # an ac_v2 (pooled, 32-d) checkpoint converted with the ac_v1 (projected, 16-d) architecture
    v1_config = files_copy["root"] / "dit_v1.json"
    v1_config.write_text(json.dumps({**json.loads((files_copy["root"] / "dit_config.json").read_text()), "cond_token_dim": 16}))
    err = convert_fails(files_copy, capsys, "--dit-config", str(v1_config))
    assert f"{ckpt}: 'dit.to_cond_embed.0.weight' has shape (32, 32), the converted model expects (16, 16)" in err
    # the ac_v2 architecture given the text embedding of another variant (projected, 16-d)
    err = convert_fails(files_copy, capsys, "--checkpoint", str(ckpt), variant="ac_v1_iclr")
    assert f"{ckpt}: the DiT attends to 32-d text tokens, but the 'projected' CLAP embedding of variant ac_v1_iclr is 16-d" in err


def test_a_checkpoint_whose_clap_copy_differs_from_the_clap_file_is_reported(files_copy, capsys, tmp_path):
    ckpt = files_copy["root"] / CKPT
    sd = torch.load(ckpt, weights_only=True)
    sd["text_encoder.model.text_projection.0.weight"] = sd["text_encoder.model.text_projection.0.weight"] + 0.5
    torch.save(sd, ckpt)
    assert convert_main(convert_args(files_copy, "ac_v2", tmp_path / "out")) == 0
    assert "warning: the CLAP copy inside ac_v2_ema_0999_030000.pt differs from 630k-audioset-best.pt (max |diff| 0.5)" in capsys.readouterr().out


def test_a_clap_copy_tensor_of_another_shape_is_named(files_copy, capsys):
    """A checkpoint whose CLAP copy holds a tensor of another shape than the CLAP checkpoint's (a stray
    text_projection.0.weight of shape (4, 4) was seen) stops with the key, not torch's broadcasting error."""
    ckpt = files_copy["root"] / CKPT
    sd = torch.load(ckpt, weights_only=True)
    sd["text_encoder.model.text_projection.0.weight"] = torch.zeros(4, 4)
    torch.save(sd, ckpt)
    err = convert_fails(files_copy, capsys)
    assert f"{ckpt}: the CLAP copy inside the checkpoint holds 'text_encoder.model.text_projection.0.weight' of shape (4, 4)" in err


def test_pickles_that_need_code_are_refused_unless_trusted(files_copy, capsys, tmp_path):
    import argparse

    weights = files_copy["root"] / "utils_checkpoints/vae/gaussiandac/weights.pth"
    dac = torch.load(weights, weights_only=True)
    dac["metadata"]["args"] = argparse.Namespace(lr=1e-4)  # e.g. a config object pickled by a training script
    torch.save(dac, weights)
    err = convert_fails(files_copy, capsys)
    assert f"{weights}: VAE weights (weights.pth) cannot be read with torch.load(weights_only=True)" in err
    assert "argparse.Namespace" in err and "--trust-pickles" in err
    output = tmp_path / "trusted"
    assert convert_main(convert_args(files_copy, "ac_v2", output) + ["--trust-pickles"]) == 0
    assert (output / "model_index.json").is_file()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_pickle_protocol_4_is_refused_by_name(tmp_path):
    path = tmp_path / "630k-audioset-best.pt"
    torch.save({"state_dict": {"module.logit_scale_t": torch.ones(())}}, path, pickle_protocol=4)
    with pytest.raises(ValueError, match=r"pickle opcode FRAME of pickle protocol 4, which the weights-only unpickler does not read"):
        load_pickle(path, "CLAP checkpoint")
    assert load_pickle(path, "CLAP checkpoint", trust_pickles=True)["state_dict"]["module.logit_scale_t"] == 1


def test_numpy_scalars_in_a_training_checkpoint_load_without_trusting_it(authors_files):  # noqa: F811
    clap = load_pickle(authors_files["ac_v2"]["root"] / "utils_checkpoints/clap/630k-audioset-best.pt", "CLAP checkpoint")
    assert isinstance(clap["best_metric"], np.floating) and clap["epoch"] == 45


def test_failure_while_writing_leaves_nothing_and_existing_output_is_kept(files_copy, capsys, monkeypatch):
    import hub.convert

    def broken_card(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hub.convert, "write_model_card", broken_card)
    err = convert_fails(files_copy, capsys)
    assert "disk full" in err
    monkeypatch.undo()
    output = files_copy["root"].parent / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert convert_main(convert_args(files_copy, "ac_v2", output)) == 2
    assert "already exists" in capsys.readouterr().err and (output / "keep.txt").read_text() == "mine"
    assert convert_main(convert_args(files_copy, "ac_v2", output) + ["--overwrite"]) == 0
    assert not (output / "keep.txt").exists() and (output / "model_index.json").is_file()


@pytest.mark.parametrize("offline", [True, False])
def test_without_files_or_network_the_download_fails_at_once_with_a_clear_message(offline, tmp_path, monkeypatch, capsys):
    """HF_HUB_OFFLINE, or a Hub that cannot be reached (here: a closed loopback port), and the files not in the cache:
    one clear error, no retries."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    assert convert_main(["--variant", "ac_v2", "--output", str(tmp_path / "out")]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    reason = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
    assert f"cannot download the ac_v2 files from koichisaito/soundctm_dit: {reason}" in err
    assert "--source DIR" in err and not (tmp_path / "out").exists()


def test_offline_without_a_tokenizer_folder_asks_for_one(files_copy, capsys):
    args = convert_args(files_copy, "ac_v2", files_copy["root"].parent / "out")
    i = args.index("--tokenizer")
    assert convert_main(args[:i] + args[i + 2:]) == 2
    assert "pass --tokenizer DIR" in capsys.readouterr().err


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--variant {ac_v1_iclr,ac_v2,as_ac_v2,unet16k}" in out
    assert "--trust-pickles" in out and "--tokenizer" in out


def test_demo_layout_and_as_ac_v2_checkpoint_names_are_found(tmp_path):
    """Files kept as the authors' demo keeps them (ckpt/models, ckpt/utils) are found without flags; as_ac_v2's
    checkpoint is found by pattern under either spelling."""
    from hub.authors_checkpoints import VARIANTS, resolve_source_files

    for rel in ("ckpt/models/ac_as_v2_ema_0999_020000.pt", "ckpt/models/z_stats.pth", "ckpt/utils/gaussiandac/weights.pth",
                "ckpt/utils/630k-audioset-best.pt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files = resolve_source_files(str(tmp_path), VARIANTS["as_ac_v2"])
    assert files.checkpoint.name == "ac_as_v2_ema_0999_020000.pt" and files.vae_weights.parent.name == "gaussiandac"
    with pytest.raises(FileNotFoundError, match=r"SoundCTM checkpoint not found .* pass --checkpoint FILE"):
        resolve_source_files(str(tmp_path), VARIANTS["ac_v2"])
