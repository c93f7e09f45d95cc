"""The app's handlers, called directly: what each column holds, drafts and refinement, bad input, model lookup."""

import os
import shlex
import sys

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

from app_testing import (  # noqa: F401  (fixtures)
    PROMPT,
    app_module,
    load_app_module,
    models_dir,
    one_torch_thread,
    reference,
    save_tiny_models,
    soundctm_app,
)
from soundctm import cli


def compare_kwargs(max_duration, **changes):
    kwargs = dict(prompt=PROMPT, negative_prompt="", seed=7, omega=5.0, nu=1.0, gamma=0.0, duration=max_duration,
                  steps=["1", "2", "4", "8", "16", "teacher"])
    kwargs.update(changes)
    return kwargs


def columns(app, outputs):
    """{slot: (audio, spectrogram, time text)} from the flat output list of `compare`."""
    return {slot: tuple(outputs[3 * i: 3 * i + 3]) for i, slot in enumerate(app.slots)}


def test_every_column_is_the_pipeline_output_for_the_one_seed(soundctm_app, reference):
    outputs = soundctm_app.compare(**compare_kwargs(reference.max_duration))
    by_slot = columns(soundctm_app, outputs)
    assert list(by_slot) == ["1", "2", "4", "8", "16", "teacher"]
    shapes = set()
    for slot, (audio, image, time_text) in by_slot.items():
        rate, samples = audio
        assert rate == 44100
        expected = reference(7, 40, "teacher") if slot == "teacher" else reference(7, int(slot))
        np.testing.assert_array_equal(samples, expected, err_msg=f"column {slot}")
        assert image.ndim == 3 and image.shape[2] == 3
        shapes.add(image.shape)
        assert time_text.endswith(" s") and soundctm_app.slot_label(slot) in time_text
    assert len(shapes) == 1, "spectrograms of one row have the same size"
    # More steps really change the sound here, so the equalities above pin each column to its own step count.
    assert not np.array_equal(by_slot["1"][0][1], by_slot["16"][0][1])


def test_copied_command_makes_the_same_sound(soundctm_app, reference, tmp_path):
    outputs = soundctm_app.compare(**compare_kwargs(reference.max_duration, steps=["4"], seed=123, nu=2.0, negative_prompt="rain"))
    settings = outputs[-1]
    assert "seed: 123" in settings and "negative prompt: rain" in settings
    line = next(line for line in settings.splitlines() if line.startswith("4 steps: "))
    argv = shlex.split(line.removeprefix("4 steps: "))
    assert argv[:2] == ["soundctm", "generate"]
    out = tmp_path / "copied.wav"
    argv[argv.index("-o") + 1] = str(out)
    assert cli.main(argv[1:] + ["--quiet"]) == 0
    written, rate = sf.read(out, dtype="int16")
    assert rate == 44100
    page = columns(soundctm_app, outputs)["4"][0][1]
    assert np.abs(written.astype(int) - page.astype(int)).max() <= 1  # two int16 roundings of the same float


def test_only_the_chosen_columns_are_filled(soundctm_app, reference):
    outputs = soundctm_app.compare(**compare_kwargs(reference.max_duration, steps=["2", "teacher"]))
    for slot, (audio, image, time_text) in columns(soundctm_app, outputs).items():
        assert (audio is not None) == (slot in ("2", "teacher")), slot
        assert (image is not None) == (audio is not None)


SKIP = gr.skip()


def test_compare_streams_each_column_as_it_finishes(soundctm_app, reference):
    kwargs = compare_kwargs(reference.max_duration, steps=["1", "4", "teacher"])
    updates = list(soundctm_app.compare_stream(**kwargs, progress=lambda *a, **k: None))
    assert len(updates) == 3
    first, middle, last = (columns(soundctm_app, update) for update in updates)
    # The first update clears the previous result: its own column filled, the others and the settings empty.
    np.testing.assert_array_equal(first["1"][0][1], reference(7, 1))
    assert all(first[slot] == (None, None, "") for slot in ("2", "4", "8", "16", "teacher"))
    assert updates[0][-1] is None
    # The next ones send their own column only.
    np.testing.assert_array_equal(middle["4"][0][1], reference(7, 4))
    assert all(middle[slot] == (SKIP,) * 3 for slot in middle if slot != "4") and updates[1][-1] == SKIP
    # The last sends the teacher's column and the settings; merged, the updates are the whole result, as `compare`
    # and the /compare endpoint return it.
    assert all(last[slot] == (SKIP,) * 3 for slot in last if slot != "teacher") and last["teacher"][0] is not None
    skipped = lambda value: isinstance(value, dict) and value == SKIP  # noqa: E731
    merged = [old if skipped(new) else new for old, new in zip(updates[0], updates[1])]
    merged = [old if skipped(new) else new for old, new in zip(merged, updates[2])]
    full = soundctm_app.compare(**kwargs)
    for slot in soundctm_app.slots:
        for got, want in zip(columns(soundctm_app, merged)[slot], columns(soundctm_app, full)[slot]):
            if isinstance(want, tuple):
                assert got[0] == want[0] and np.array_equal(got[1], want[1]), slot
            elif isinstance(want, np.ndarray):
                np.testing.assert_array_equal(got, want)
            elif slot != "teacher" and want is not None and want.endswith(" s"):
                assert got.startswith(soundctm_app.slot_label(slot)), slot  # times differ between the two runs
            else:
                assert got == want or got.endswith(" s"), slot
    assert updates[-1][-1] == full[-1] and "seed: 7" in full[-1]


def test_compute_threads_run_handlers_and_streams_in_the_callers_context(app_module):
    import contextvars
    import threading

    var = contextvars.ContextVar("request", default=None)
    compute = app_module.ComputeThreads(1)
    try:

        def where(x):
            return x, threading.current_thread().name, var.get()

        def steps(n):
            for i in range(n):
                yield i, threading.current_thread().name, var.get()

        def fails():
            raise ValueError("named argument")

        var.set("event-1")
        assert compute.wrap(where)(3) == (3, "soundctm-compute_0", "event-1")
        assert list(compute.wrap(steps)(2)) == [(i, "soundctm-compute_0", "event-1") for i in range(2)]
        with pytest.raises(ValueError, match="named argument"):
            compute.wrap(fails)()
        # Gradio finds gr.Progress by the handler's signature.
        import inspect

        assert inspect.signature(compute.wrap(steps)) == inspect.signature(steps)
        assert inspect.isgeneratorfunction(compute.wrap(steps))
    finally:
        compute.shutdown()


def test_drafts_depend_only_on_their_own_seed_and_refine_keeps_the_draft(soundctm_app, reference):
    outputs = soundctm_app.drafts(PROMPT, "", 5.0, 1.0, reference.max_duration, 3)
    assert len(outputs) == 3 * 8
    drafts = [tuple(outputs[3 * i: 3 * i + 3]) for i in range(8)]
    assert all(d == (None, None, None) for d in drafts[3:])
    seeds = [seed for _, _, seed in drafts[:3]]
    assert len(set(seeds)) == 3
    for (rate, samples), image, seed in drafts[:3]:
        # One batched call, one generator per draft: each draft is the sound its seed gives on its own.
        alone = reference(seed, 1)
        assert np.abs(samples.astype(int) - alone.astype(int)).max() <= 1
        assert image.ndim == 3
    assert not np.array_equal(drafts[0][0][1], drafts[1][0][1])

    seed = seeds[1]
    again, _, _, settings = soundctm_app.refine(PROMPT, "", seed, 5.0, 1.0, 0.0, reference.max_duration, 1)
    assert np.abs(again[1].astype(int) - drafts[1][0][1].astype(int)).max() <= 1
    refined, image, time_text, settings = soundctm_app.refine(PROMPT, "", seed, 5.0, 1.0, 0.0, reference.max_duration, 8)
    np.testing.assert_array_equal(refined[1], reference(seed, 8))
    assert f"seed: {seed}" in settings and f"--seed {seed} --steps 8" in settings
    assert time_text.startswith("8 steps: ")


BAD_INPUTS = [
    ("compare", dict(prompt="   "), "Type a prompt"),
    ("compare", dict(prompt="x" * 2000), "keep it under"),
    ("compare", dict(seed=-1), "Seed must be from 0"),
    ("compare", dict(seed=2.5), "Seed must be a whole number"),
    ("compare", dict(seed=None), "Seed must be a number"),
    ("compare", dict(omega=50.0), "ω (omega) must be from 1 to 10"),
    ("compare", dict(nu=float("nan")), "ν (nu) must be a number"),
    ("compare", dict(gamma=1.5), "γ (gamma) must be from 0 to 1"),
    ("compare", dict(duration=0.0), "Duration (s) must be more than 0"),
    ("compare", dict(duration=60.0), "Duration (s) must be from 0"),
    ("compare", dict(steps=[]), "Choose step counts"),
    ("compare", dict(steps=["3"]), "not 3"),
    ("drafts", dict(count=0), "Number of drafts must be from 1 to 8"),
    ("drafts", dict(count=9), "Number of drafts must be from 1 to 8"),
    ("refine", dict(steps=0), "Steps must be from 1 to 64"),
    ("refine", dict(steps=1000), "Steps must be from 1 to 64"),
]


@pytest.mark.parametrize("handler,change,message", BAD_INPUTS, ids=[f"{h}-{m}" for h, _, m in BAD_INPUTS])
def test_bad_input_is_a_readable_error_and_the_next_request_works(soundctm_app, reference, handler, change, message):
    base = compare_kwargs(reference.max_duration)
    if handler == "drafts":
        base = dict(prompt=PROMPT, negative_prompt="", omega=5.0, nu=1.0, duration=reference.max_duration, count=2)
    elif handler == "refine":
        base["steps"] = 4
    with pytest.raises(gr.Error) as caught:
        getattr(soundctm_app, handler)(**{**base, **change})
    assert message in caught.value.message
    good = soundctm_app.refine(PROMPT, "", 3, 5.0, 1.0, 0.0, reference.max_duration, 2)
    np.testing.assert_array_equal(good[0][1], reference(3, 2))


def test_a_model_that_fails_to_load_is_reported_and_retried(app_module, tmp_path, reference):
    later = tmp_path / "not-yet"
    app = app_module.SoundCTMApp(str(later))
    app.build()  # the page is still served
    for _ in range(2):
        with pytest.raises(gr.Error) as caught:
            app.refine(PROMPT, "", 3, 5.0, 1.0, 0.0, None, 2)
        assert "Could not load the student model" in caught.value.message and "not-yet" in caught.value.message
    save_tiny_models(tmp_path)
    (tmp_path / "student").rename(later)
    audio, _, _, _ = app.refine(PROMPT, "", 3, 5.0, 1.0, 0.0, None, 2)
    np.testing.assert_array_equal(audio[1], reference(3, 2))


def test_a_broken_teacher_leaves_the_student_columns(app_module, models_dir, tmp_path, reference):
    broken = tmp_path / "teacher"
    broken.mkdir()
    (broken / "model_index.json").write_text("{ not json")
    app = app_module.SoundCTMApp(str(models_dir / "student"), str(broken))
    with pytest.warns(UserWarning, match="Teacher column skipped: Could not load the teacher model"):
        outputs = app.compare(**compare_kwargs(reference.max_duration, steps=["1", "teacher"]))
    by_slot = columns(app, outputs)
    np.testing.assert_array_equal(by_slot["1"][0][1], reference(7, 1))
    assert by_slot["teacher"][0] is None and "not available" in by_slot["teacher"][2]


def test_a_teacher_given_as_the_model_is_refused_by_name(app_module, models_dir):
    app = app_module.SoundCTMApp(str(models_dir / "teacher"))
    with pytest.raises(gr.Error) as caught:
        app.refine(PROMPT, "", 3, 5.0, 1.0, 0.0, None, 2)
    assert "is a SoundCTM teacher" in caught.value.message and "--teacher" in caught.value.message


def test_model_and_teacher_lookup(app_module, models_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SOUNDCTM_MODEL", raising=False)
    monkeypatch.delenv("SOUNDCTM_TEACHER", raising=False)
    student, teacher = str(models_dir / "student"), str(models_dir / "teacher")
    resolve = app_module.resolve_models
    assert resolve(str(models_dir)) == (student, teacher)  # a root folder with student/ and teacher/
    assert resolve(student) == (student, teacher)  # teacher/ beside the student
    assert resolve(student, use_teacher=False) == (student, None)
    assert resolve(student, "owner/teacher") == (student, "owner/teacher")
    assert resolve("owner/student") == ("owner/student", None)  # a Hub id has no sibling teacher
    alone = tmp_path / "alone" / "student"
    alone.parent.mkdir()
    (models_dir / "student").rename(alone)
    try:
        assert resolve(str(alone)) == (str(alone), None)
    finally:
        alone.rename(models_dir / "student")
    monkeypatch.setenv("SOUNDCTM_MODEL", student)
    monkeypatch.setenv("SOUNDCTM_TEACHER", "owner/other-teacher")
    assert resolve(None) == (student, "owner/other-teacher")
    assert resolve("owner/student", "owner/t") == ("owner/student", "owner/t")  # arguments beat variables


def test_bundled_model_is_the_default_and_its_absence_is_a_clear_message(app_module, models_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SOUNDCTM_MODEL", raising=False)
    monkeypatch.delenv("SOUNDCTM_TEACHER", raising=False)
    monkeypatch.setattr(cli, "bundled_model_dir", lambda: models_dir / "student")
    assert app_module.resolve_models() == (str(models_dir / "student"), str(models_dir / "teacher"))
    monkeypatch.setattr(cli, "bundled_model_dir", lambda: tmp_path / "soundctm-demo" / "student")
    assert app_module.main([]) == 2
    err = capsys.readouterr().err
    assert "no model given and no bundled model" in err and "--model" in err


def test_examples_are_the_models_own_prompts_else_general_ones(app_module, models_dir, tmp_path):
    import shutil

    from hub.model_card import CardFacts, write_model_card

    general = app_module.SoundCTMApp(str(models_dir / "student"))
    general.student.get()
    assert general.example_prompts() == app_module.EXAMPLES  # no model card: general sound-effect prompts
    shutil.copytree(models_dir / "student", tmp_path / "student")
    write_model_card(tmp_path / "student", CardFacts(example_prompts=["a slow siren", "fast clicks"]))
    own = app_module.SoundCTMApp(str(tmp_path / "student"))
    own.student.get()
    assert own.example_prompts() == ["a slow siren", "fast clicks"]
    assert general.default_guidance_scale() == own.student.get().default_guidance_scale == 5.0  # where ω starts


def test_a_16khz_unet_student_runs_and_the_page_names_its_rate(app_module, tmp_path):
    from tiny_models import tiny_unet16k_pipeline

    tiny_unet16k_pipeline(student=True).save_pretrained(tmp_path / "unet16k")
    app = app_module.SoundCTMApp(str(tmp_path / "unet16k"))
    pipe = app.student.get()
    assert "16 kHz, up to 0.1 s" in app.model_text()
    outputs = app.compare(**compare_kwargs(pipe.max_audio_length_in_s, steps=["1", "2"]))
    for steps in ("1", "2"):
        (rate, audio), image, _ = columns(app, outputs)[steps]
        assert rate == 16000 and audio.shape[-1] == pipe.latent_frames * pipe.vae.hop_length and image is not None


def test_the_teacher_column_runs_the_teacher_folders_own_step_count(app_module, models_dir, tmp_path):
    from soundctm import SoundCTMPipeline

    default = app_module.SoundCTMApp(str(models_dir / "student"), str(models_dir / "teacher"))
    default.teacher.get()
    assert default.slot_label("teacher") == "Teacher (Heun, 40 steps)"
    teacher = SoundCTMPipeline.from_pretrained(str(models_dir / "teacher"))
    SoundCTMPipeline(**teacher.components, text_embedding=teacher.config.text_embedding, num_inference_steps=3).save_pretrained(tmp_path / "t3")
    app = app_module.SoundCTMApp(str(models_dir / "student"), str(tmp_path / "t3"))
    pipe = app.teacher.get()
    assert app.slot_label("teacher") == "Teacher (Heun, 3 steps)"
    evaluations = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a: evaluations.append(1))
    try:
        *_, settings_text = app.compare(**compare_kwargs(app.max_duration(), steps=["teacher"]))
    finally:
        hook.remove()
    assert len(evaluations) == 2 * 3 - 1 and "--steps 3" in settings_text


def test_duration_shows_rounded_seconds_and_its_end_is_the_full_length(app_module, soundctm_app, reference):
    assert app_module.duration_slider(4.08671201814059) == (0.1, 4.1)
    assert app_module.duration_slider(10.0) == (0.1, 10.0)
    assert app_module.duration_slider(47.55) == (1.0, 48.0)
    step, end = app_module.duration_slider(reference.max_duration)
    settings = soundctm_app.settings(PROMPT, "", 0, 5.0, 1.0, 0.0, end)
    assert settings.full_length and settings.duration == reference.max_duration
    assert f"duration: {reference.max_duration:.2f} s" in settings.describe([])
    with pytest.raises(gr.Error, match=f"at most {end:g}|from 0 to {end:g}"):
        soundctm_app.settings(PROMPT, "", 0, 5.0, 1.0, 0.0, end + step)


def test_bad_command_line_values_are_refused_before_serving(app_module, models_dir, capsys):
    assert app_module.main(["--model", str(models_dir), "--steps", "1,0"]) == 2
    assert "step_choices must be step counts from 1 to 64" in capsys.readouterr().err
    assert app_module.main(["--model", str(models_dir), "--steps", "1,two"]) == 2
    assert "--steps must be step counts separated by commas" in capsys.readouterr().err
    assert app_module.main(["--model", str(models_dir), "--max-queue", "0"]) == 2
    assert "--max-queue must be at least 1" in capsys.readouterr().err


def test_the_app_works_without_the_spaces_package(models_dir, reference, monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # makes `import spaces` fail
    module = load_app_module("app_without_spaces")
    assert module.spaces is None
    handler = lambda x: x + 1  # noqa: E731
    assert module.on_gpu(handler) is handler
    app = module.SoundCTMApp(str(models_dir / "student"))
    app.build()
    audio, _, _, _ = app.refine(PROMPT, "", 5, 5.0, 1.0, 0.0, None, 1)
    np.testing.assert_array_equal(audio[1], reference(5, 1))


def test_spaces_gpu_wraps_the_handlers_when_installed(app_module):
    spaces = pytest.importorskip("spaces")
    assert app_module.spaces is spaces
    assert app_module.on_gpu(lambda x: x * 2)(21) == 42  # off ZeroGPU the decorator runs the function as it is


def test_sound_keeps_its_loudness_on_the_page(app_module):
    audio = np.full((1, 100), 0.25, dtype=np.float32)
    pcm = app_module.to_int16(audio)
    assert pcm.dtype == np.int16 and pcm.shape == (100,)
    assert pcm.max() == 8192  # not normalised to the peak, as Gradio does with float audio
    stereo = app_module.to_int16(np.stack([audio[0], -audio[0]]))
    assert stereo.shape == (100, 2) and stereo[0, 1] == -8192


def test_spectrograms_share_one_absolute_scale(app_module):
    rate = 44100
    t = np.arange(rate) / rate
    loud = np.sin(2 * np.pi * 1000 * t)[None]
    loud_image = app_module.spectrogram_image(loud, rate)
    quiet_image = app_module.spectrogram_image(loud * 1e-3, rate)  # 60 dB lower
    assert loud_image.shape == quiet_image.shape
    silent_image = app_module.spectrogram_image(loud * 0.0, rate)
    # A per-image colour scale would draw the loud and the quiet tone alike; the fixed dB scale draws the quiet one
    # darker, and silence darker still.
    assert loud_image.mean() > quiet_image.mean() > silent_image.mean()
    short = app_module.spectrogram_image(loud[:, :128], rate)  # shorter than one analysis window
    assert short.shape == loud_image.shape


# ------------------------------------------------------------------------------------------------ Stable Audio Open
@pytest.fixture(scope="module")
def stable_audio_dir(tmp_path_factory):
    """A tiny Stable Audio Open student and teacher in the bundled layout (`student/`, `teacher/`)."""
    from tiny_models import tiny_stable_audio_pipeline

    root = tmp_path_factory.mktemp("stable-audio")
    tiny_stable_audio_pipeline(student=True).save_pretrained(root / "student")
    tiny_stable_audio_pipeline(student=False).save_pretrained(root / "teacher")
    return root


@pytest.fixture(scope="module")
def stable_audio_app(app_module, stable_audio_dir):
    return app_module.SoundCTMApp(*app_module.resolve_models(str(stable_audio_dir)))


def stereo_reference(folder, seed, steps, **kwargs):
    """int16 `(samples, 2)`, as the page gets a stereo sound, from a pipeline loaded on its own."""
    import torch

    from soundctm import SoundCTMStableAudioPipeline

    pipe = SoundCTMStableAudioPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    audio = pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kwargs).audios[0]
    assert audio.shape[0] == 2
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).T


def test_a_stable_audio_student_and_teacher_compare_in_stereo(stable_audio_app, stable_audio_dir, tmp_path):
    app = stable_audio_app
    assert app.teacher is not None and app.teacher.model == str(stable_audio_dir / "teacher")
    pipe = app.student.get()
    assert type(pipe).__name__ == "SoundCTMStableAudioPipeline" and app.default_guidance_scale() == 4.0
    assert "44.1 kHz stereo" in app.model_text()
    by_slot = columns(app, app.compare(**compare_kwargs(app.max_duration(), seed=7, nu=2.0)))
    assert list(by_slot) == ["1", "2", "4", "8", "16", "teacher"]
    for slot, ((rate, samples), image, time_text) in by_slot.items():
        assert rate == 44100 and samples.dtype == np.int16 and samples.shape == (32, 2), slot
        if slot == "teacher":  # ω is the teacher's CFG scale; ν is the student's only
            expected = stereo_reference(stable_audio_dir / "teacher", 7, 40, guidance_scale=5.0)
        else:
            expected = stereo_reference(stable_audio_dir / "student", 7, int(slot), guidance_scale=5.0, nu=2.0)
        np.testing.assert_array_equal(samples, expected, err_msg=f"column {slot}")
        assert image.ndim == 3 and image.shape[2] == 3 and time_text.endswith(" s")
    assert not np.array_equal(by_slot["1"][0][1][:, 0], by_slot["1"][0][1][:, 1]), "two channels of their own"

    # drafts and refinement are stereo too, and a copied command makes the same stereo file
    drafts = app.drafts(PROMPT, "", 5.0, 1.0, app.max_duration(), 2)
    assert drafts[0][1].shape == (32, 2) and drafts[3][1].shape == (32, 2)
    audio, _, _, settings = app.refine(PROMPT, "", drafts[2], 5.0, 1.0, 0.0, app.max_duration(), 1)
    assert np.abs(audio[1].astype(int) - drafts[0][1].astype(int)).max() <= 1
    line = next(line for line in settings.splitlines() if line.startswith("soundctm generate"))
    argv = shlex.split(line)
    argv[argv.index("-o") + 1] = str(tmp_path / "copied.wav")
    assert cli.main(argv[1:] + ["--quiet"]) == 0
    written, rate = sf.read(tmp_path / "copied.wav", dtype="int16")
    assert rate == 44100 and written.shape == (32, 2)
    assert np.abs(written.astype(int) - audio[1].astype(int)).max() <= 1


def test_a_stable_audio_model_gets_a_note_instead_of_the_editing_tabs(app_module, stable_audio_app):
    from app_control import ControlTabs

    demo = stable_audio_app.build()
    endpoints = {fn.api_name for fn in demo.fns.values()}
    assert {"compare", "drafts", "refine"} <= endpoints
    assert not endpoints & {"intensity", "bandwidth", "audio2audio"}
    notes = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "editing-unsupported"]
    assert len(notes) == 1 and "Stable Audio Open" in notes[0].value
    # The tabs' handlers, reached another way (a student that loads only after the page was built), say so too.
    with pytest.raises(gr.Error) as caught:
        ControlTabs(stable_audio_app.student.get).audio2audio((44100, np.zeros(64, np.int16)), PROMPT, 0.5, 2, 0, 5.0, 1.0, 0.0)
    assert "Stable Audio Open" in caught.value.message and "SoundCTM DiT and UNet" in caught.value.message


def test_stereo_spectrograms_average_the_channels_power_not_their_waveforms(app_module):
    rate = 44100
    tone = np.sin(2 * np.pi * 1000 * np.arange(rate // 4) / rate)[None]
    mono = app_module.spectrogram_image(tone, rate)
    np.testing.assert_array_equal(app_module.spectrogram_image(np.concatenate([tone, -tone]), rate), mono)  # out of phase
    np.testing.assert_array_equal(app_module.spectrogram_image(np.concatenate([tone, tone]), rate), mono)
    one_side = app_module.spectrogram_image(np.concatenate([tone, 0 * tone]), rate)  # half the power: 3 dB darker
    assert one_side.mean() < mono.mean()
