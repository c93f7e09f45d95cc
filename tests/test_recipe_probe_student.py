"""recipes/procedural/probe_student.py: the student against the teacher's solutions from the noise its trajectories
were solved from and from fresh noise. The fresh set is solved as the trainer solves its own, so from the same noise
it is the same set and the two rows agree."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import tiny_pipeline

from distill.teacher import make_teacher, teacher_ctm_scheduler
from distill.trajectories import solve_trajectories, trajectory_files
from recipes.procedural import probe_student

CAPTIONS = ["the sound of a high-pitched tone fading out", "we hear a tone sweeping up", "", "the sound of fast clicks"]


def save_trajectories(tmp_path, teacher, seed: int):
    """Trajectories as distill/trajectories.py saves them, solved from `seed`'s noise (the empty caption's last)."""
    order = [0, 1, 3, 2]  # the probe keeps the captioned ones, in order, and solves its fresh set in one stream
    captions = [CAPTIONS[i] for i in order]
    omega = torch.tensor([2.0, 3.0, 1.5, 2.0])
    scheduler = teacher_ctm_scheduler(teacher.scheduler.config)
    sigmas = torch.from_numpy(scheduler.karras_sigmas(6)).float()  # as distill/train.py builds its grid
    uncond = teacher.encode_text([""], torch.device("cpu"), return_mask=True)
    points = solve_trajectories(
        make_teacher(teacher.transformer, scheduler), teacher, captions, omega, sigmas, tuple(teacher.latent_shape),
        torch.Generator().manual_seed(seed), uncond_embeds=uncond,
    )  # fmt: skip
    folder = tmp_path / "teacher_trajectories"
    folder.mkdir()
    tensors_path, metadata_path = trajectory_files(str(folder), rank=0)
    save_file({"points": points, "omega": omega}, tensors_path)
    settings = {"sigmas": [float(s) for s in sigmas], "latent_shape": list(teacher.latent_shape)}
    with open(metadata_path, "w") as f:
        json.dump({"settings": settings, "captions": captions}, f)
    return folder


def test_from_the_same_noise_the_fresh_set_is_the_trained_set(tmp_path, monkeypatch):
    # The tiny codec's clips are shorter than the evaluator's FFT: score them by their mean level instead, which still
    # compares the decoded clips of the two sets (the evaluator has its own tests).
    monkeypatch.setattr(probe_student, "accuracy", lambda clips, prompts: float(np.mean([np.abs(c).mean() for c in clips])))
    teacher, student = tiny_pipeline(student=False), tiny_pipeline(student=True, seed=1)
    teacher.save_pretrained(str(tmp_path / "teacher"))
    student.save_pretrained(str(tmp_path / "student"))
    folder = save_trajectories(tmp_path, teacher, seed=7)
    common = ["--student", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"), "--trajectories", str(folder)]
    probe_student.main([*common, "--seed", "7", "--json", str(tmp_path / "same.json")])
    result = json.loads((tmp_path / "same.json").read_text())
    assert result["count"] == 3  # the empty caption's trajectory is left out
    trained, fresh = result["sets"]["trained noise"], result["sets"]["fresh noise"]
    assert trained.keys() == fresh.keys() == {"teacher_adherence", "error_1", "adherence_1", "error_16", "adherence_16"}
    for key in trained:
        assert trained[key] == pytest.approx(fresh[key], rel=1e-4, abs=1e-6), key
    assert trained["error_1"] > 0
    probe_student.main([*common, "--seed", "8", "--count", "2", "--json", str(tmp_path / "other.json")])
    other = json.loads((tmp_path / "other.json").read_text())
    assert other["count"] == 2 and other["sets"]["fresh noise"]["error_1"] != pytest.approx(other["sets"]["trained noise"]["error_1"])
    with pytest.raises(ValueError, match="--student must be a SoundCTM student pipeline"):
        probe_student.main(["--student", str(tmp_path / "teacher"), "--teacher", str(tmp_path / "teacher"), "--trajectories", str(folder)])
