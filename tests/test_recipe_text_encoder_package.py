"""A pipeline folder saved without its text encoder loads it from the installed package its config names
(`text_encoder_package`), with the installed classes and with the folder's own code; passed components win."""

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from tiny_models import tiny_text_encoder, tiny_transformer, tiny_vae

from soundctm import CTMScheduler, SoundCTMPipeline

PACKAGE = "tiny_packaged_text_encoder"


@pytest.fixture(scope="module")
def packaged_folder(tmp_path_factory):
    """A pipeline folder whose model_index.json says text_encoder/tokenizer are null and names a package that
    ships them (a tiny BERT written into an importable package on sys.path)."""
    root = tmp_path_factory.mktemp("packaged")
    encoder, tokenizer, width = tiny_text_encoder("mean")
    package = root / "site" / PACKAGE
    encoder.save_pretrained(package / "model")
    tokenizer.save_pretrained(package / "model")
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            def get_model_path():
                return Path(__file__).parent / "model"
            """
        )
    )
    sys.path.insert(0, str(root / "site"))
    pipe = SoundCTMPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        transformer=tiny_transformer(width),
        scheduler=CTMScheduler(),
        text_embedding="mean",
        text_encoder_package=PACKAGE,
    )
    reference = pipe("a dog barks", generator=torch.Generator().manual_seed(0)).audios
    pipe.register_modules(text_encoder=None, tokenizer=None)
    folder = root / "pipe"
    pipe.save_pretrained(folder)
    yield folder, reference, encoder, tokenizer
    sys.path.remove(str(root / "site"))


def test_folder_carries_no_text_encoder_and_names_its_package(packaged_folder):
    folder = packaged_folder[0]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == [None, None] and index["tokenizer"] == [None, None]
    assert index["text_encoder_package"] == PACKAGE
    assert not (folder / "text_encoder").exists() and not (folder / "tokenizer").exists()


def test_installed_classes_load_the_packaged_encoder_and_generate_the_same_sound(packaged_folder):
    folder, reference = packaged_folder[:2]
    pipe = SoundCTMPipeline.from_pretrained(folder)
    assert pipe.text_encoder is not None and pipe.tokenizer is not None
    audio = pipe("a dog barks", generator=torch.Generator().manual_seed(0)).audios
    np.testing.assert_allclose(audio, reference, atol=1e-6)


def test_folder_code_loads_it_too_and_passed_components_win(packaged_folder):
    folder, reference, encoder, tokenizer = packaged_folder
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipe).__module__.startswith("diffusers_modules")
    np.testing.assert_allclose(pipe("a dog barks", generator=torch.Generator().manual_seed(0)).audios, reference, atol=1e-6)
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, text_encoder=encoder, tokenizer=tokenizer)
    assert pipe.text_encoder is encoder and pipe.tokenizer is tokenizer


def test_a_missing_package_says_how_to_install_it(packaged_folder, tmp_path):
    folder = packaged_folder[0]
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_package"] = "no_such_text_encoder_pkg"
    other = tmp_path / "other"
    other.mkdir()
    for item in folder.iterdir():
        (other / item.name).symlink_to(item)
    (other / "model_index.json").unlink()
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ImportError, match="pip install no-such-text-encoder-pkg"):
        SoundCTMPipeline.from_pretrained(other)


def test_without_encoder_or_package_prompts_fail_clearly_but_embeddings_work(packaged_folder):
    folder = packaged_folder[0]
    pipe = SoundCTMPipeline.from_pretrained(folder)
    bare = SoundCTMPipeline(vae=pipe.vae, text_encoder=None, tokenizer=None, transformer=pipe.transformer,
                            scheduler=pipe.scheduler, text_embedding="mean")  # fmt: skip
    with pytest.raises(ValueError, match="no text encoder"):
        bare("a dog barks")
    embeds = pipe.encode_text(["a dog barks"], torch.device("cpu"))
    assert bare(prompt_embeds=embeds, output_type="latent").audios.shape[0] == 1
