"""Teacher trajectories solved once per run (distill/trajectories.py, `--num_teacher_trajectories`): every stretch of a
solved trajectory is the teacher's own guided Heun solve of it (line 9 of Algorithm 2, any k), captions cycle through
the dataset, a run with trajectories resumes bit-exactly and reads its saved trajectories instead of solving them
again, other settings solve anew, and the 1-step student distilled from them approaches the teacher's solution."""

import argparse
import os
import sys

import pytest
import torch
from test_distill_train import distil_and_resume, launch, one_step_errors, workdir  # noqa: F401  (workdir: the module fixture)
from tiny_models import tiny_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from distill.losses import expected_heun_steps, heun_solve_cfg, sample_num_heun_steps  # noqa: E402
from distill.teacher import SoundCTMTeacher  # noqa: E402
from distill.trajectories import read_captions, solve_trajectories  # noqa: E402
from soundctm import CTMScheduler  # noqa: E402


def test_every_stretch_of_a_trajectory_is_the_teachers_heun_solve_of_it():
    pipe = tiny_pipeline(student=False)
    scheduler = CTMScheduler()
    teacher = SoundCTMTeacher(pipe.transformer, scheduler)
    sigmas = torch.from_numpy(scheduler.karras_sigmas(7)).float()
    captions, omega = ["a dog barks", "", "rain falls on a roof"], torch.tensor([1.5, 3.0, 4.0])
    device = torch.device("cpu")
    uncond = pipe.encode_text([""], device, return_mask=True)
    points = solve_trajectories(
        teacher, pipe, captions, omega, sigmas, (4, 16), torch.Generator().manual_seed(0), uncond_embeds=uncond, batch_size=2
    )
    assert points.shape == (3, 7, 4, 16)
    noise = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(points[:2, 0], sigmas[0] * noise[:2])  # the first batch's draw: z_{t_0} = t_0·ε

    cond = pipe.encode_text(captions, device)
    for n, k in ((0, 1), (0, 6), (2, 3), (5, 1)):
        index = torch.full((3,), n)
        solved = heun_solve_cfg(teacher, points[:, n], sigmas, index, k, cond, uncond[0].expand(3, -1, -1), omega)
        torch.testing.assert_close(points[:, n + k], solved, rtol=1e-5, atol=1e-5)
    # "" is the unconditional trajectory: any ω gives the same one
    again = solve_trajectories(
        teacher, pipe, [""], torch.tensor([9.0]), sigmas, (4, 16), torch.Generator().manual_seed(0), uncond_embeds=uncond
    )
    plain = heun_solve_cfg(teacher, again[:, 0], sigmas, torch.zeros(1, dtype=torch.long), 6, uncond[0], uncond[0], torch.tensor([1.0]))
    torch.testing.assert_close(again[:, -1], plain, rtol=1e-5, atol=1e-5)


def test_captions_cycle_through_the_records_in_a_seeded_order(workdir):  # noqa: F811
    args = argparse.Namespace(
        dataset_name=str(workdir / "wavs" / "metadata.jsonl"), audio_column="file_name", caption_column="caption",
        dataset_split="train", dataset_config_name=None, dataset_revision=None, cache_dir=None,
    )  # fmt: skip
    captions = read_captions(args, 20, rank=0, world_size=1, seed=0)
    records = [f"caption {i}" for i in range(8)] + ["broken"]  # no audio is read: the corrupt clip's caption counts
    assert len(captions) == 20 and sorted(captions[:9]) == sorted(records) and sorted(captions[9:18]) == sorted(records)
    assert captions[:9] != captions[9:18]  # each round in its own order
    assert read_captions(args, 20, rank=0, world_size=1, seed=0) == captions
    assert read_captions(args, 20, rank=0, world_size=1, seed=1) != captions
    assert read_captions(args, 3, rank=0, world_size=1, seed=0)[0] in records[:3]  # only the first `count` records


def test_uniform_heun_step_strategy_draws_every_k_alike():
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_num_heun_steps(5, g, "uniform") for _ in range(10000)])
    assert ((torch.bincount(draws, minlength=6)[1:] / len(draws) - 0.2).abs() < 0.015).all()
    assert expected_heun_steps(5, "uniform") == pytest.approx(float(draws.double().mean()), abs=0.05)
    assert expected_heun_steps(5, "uniform") == 3.0 and expected_heun_steps(5) == 11 / 3
    with pytest.raises(ValueError, match="heun_step_strategy must be one of weighted, uniform"):
        sample_num_heun_steps(5, g, "linear")


def test_a_run_on_solved_trajectories_resumes_bit_exactly_and_reuses_them(workdir):  # noqa: F811
    common = (
        "--dataset_name", str(workdir / "wavs" / "metadata.jsonl"),
        "--audio_column", "file_name",
        "--train_batch_size", "2",
        "--checkpointing_steps", "2",
        "--num_teacher_trajectories", "6",
        "--heun_step_strategy", "uniform",
        "--report_to", "none",
    )  # fmt: skip
    root = workdir / "trajectories"
    root.mkdir(exist_ok=True)
    (root / "teacher").symlink_to(workdir / "teacher")
    result = distil_and_resume(root, common)
    assert "teacher trajectories: 6 of 6 solved" in result.stderr
    assert "the teacher's solve looked up in 6 solved trajectories" in (root / "full" / "README.md").read_text()
    resumed = launch(root, root / "part", *common, "--max_train_steps", "5", "--resume_from_checkpoint", "latest")
    assert "teacher trajectories: read 6 from" in resumed.stderr and "solved" not in resumed.stderr
    other = launch(root, root / "part", *common, "--max_train_steps", "6", "--omega_max", "5", "--resume_from_checkpoint", "latest")
    assert "were solved with other settings: solving again" in other.stderr


@pytest.fixture(scope="module")
def trajectory_errors(workdir):  # noqa: F811
    """The 1-step errors before and after 200 steps on 64 solved trajectories (the paper's draw of (t, u, s))."""
    return one_step_errors(workdir, workdir / "learn_trajectories", "--num_teacher_trajectories", "64")


def test_the_one_step_student_distilled_from_trajectories_approaches_the_teachers_solution(trajectory_errors):
    """test_distill_train's learning test with the teacher's solve looked up in 64 solved trajectories: the 1-step
    student's error to the teacher's Heun solution (from noise no run drew) falls at least 2-fold in 200 steps."""
    error_before, error_after = trajectory_errors
    print(f"1-step student (trajectories) vs 10-step Heun teacher, relative squared error: {error_before:.3f} -> {error_after:.3f}")
    assert error_after < error_before / 2, (error_before, error_after)


def test_long_jumps_bring_the_one_step_student_closer_to_the_teachers_solution(workdir, trajectory_errors):  # noqa: F811
    """`--long_jump_fraction 1`: every CTM sample learns the whole jump σ_max → σ_min against its trajectory's end (the
    teacher's solution itself, no bootstrap), so in the same 200 steps the 1-step student ends closer to the teacher's
    Heun solution than with the paper's draw (measured: 0.207 against 0.247)."""
    _, error_paper = trajectory_errors
    _, error_long = one_step_errors(
        workdir, workdir / "learn_long_jumps", "--num_teacher_trajectories", "64", "--long_jump_fraction", "1.0"
    )
    print(f"1-step relative squared error after 200 steps: paper's draw {error_paper:.3f}, only long jumps {error_long:.3f}")
    assert error_long < 0.9 * error_paper, (error_paper, error_long)
