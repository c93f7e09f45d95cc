"""The app served on loopback and called through gradio_client: its API, its errors, and its queue under load."""

import concurrent.futures
import time

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError, Status
from PIL import Image

from app_testing import PROMPT, Gate, app_module, models_dir, one_torch_thread, reference, serve  # noqa: F401

STEPS = ["1", "2", "4", "8", "16", "teacher"]


def read_wav(path):
    samples, rate = sf.read(path, dtype="int16")
    return rate, samples


@pytest.fixture(scope="module")
def served(app_module, models_dir):
    """(app, client) for the app on the tiny student and teacher, served as `python app.py --model DIR` does."""
    app = app_module.SoundCTMApp(*app_module.resolve_models(str(models_dir)))
    with serve(app.build(), app_module) as url:
        yield app, Client(url, verbose=False)


def test_api_gives_every_column_as_a_wav_at_the_model_rate(served, reference):
    app, client = served
    duration = reference.max_duration
    outputs = client.predict(PROMPT, "", 11, 5.0, 1.0, 0.0, duration, STEPS, api_name="/compare")
    assert len(outputs) == 3 * len(STEPS) + 1
    sizes = set()
    for i, slot in enumerate(STEPS):
        audio_path, image_path, time_text = outputs[3 * i: 3 * i + 3]
        assert audio_path.endswith(".wav")
        rate, samples = read_wav(audio_path)
        assert rate == 44100
        expected = reference(11, 40, "teacher") if slot == "teacher" else reference(11, int(slot))
        np.testing.assert_array_equal(samples, expected, err_msg=f"column {slot}")
        sizes.add(Image.open(image_path).size)
        assert time_text.endswith(" s")
    assert len(sizes) == 1
    assert "seed: 11" in outputs[-1]


def test_api_drafts_then_refine_on_the_picked_seed(served, reference):
    app, client = served
    duration = reference.max_duration
    outputs = client.predict(PROMPT, "", 5.0, 1.0, duration, 2, api_name="/drafts")
    (first, _, seed), (second, _, other_seed) = outputs[0:3], outputs[3:6]
    assert all(o is None for o in outputs[6:])
    assert seed != other_seed
    refined = client.predict(PROMPT, "", other_seed, 5.0, 1.0, 0.0, duration, 1, api_name="/refine")
    rate, draft = read_wav(second)
    _, again = read_wav(refined[0])
    assert np.abs(draft.astype(int) - again.astype(int)).max() <= 1  # the same sound: same seed, one step
    refined = client.predict(PROMPT, "", other_seed, 5.0, 1.0, 0.0, duration, 16, api_name="/refine")
    np.testing.assert_array_equal(read_wav(refined[0])[1], reference(other_seed, 16))
    assert f"seed: {other_seed}" in refined[3]


def test_api_errors_are_readable_and_the_server_keeps_serving(served, reference):
    app, client = served
    duration = reference.max_duration
    with pytest.raises(AppError, match="Type a prompt first"):
        client.predict("", "", 1, 5.0, 1.0, 0.0, duration, ["1"], api_name="/compare")
    with pytest.raises(AppError, match="Value 50.0 is greater than maximum value 10"):  # Gradio's own range check
        client.predict(PROMPT, "", 1, 50.0, 1.0, 0.0, duration, ["1"], api_name="/compare")
    with pytest.raises(AppError, match="Seed must be from 0"):
        client.predict(PROMPT, "", -5, 5.0, 1.0, 0.0, duration, 4, api_name="/refine")
    refined = client.predict(PROMPT, "", 1, 5.0, 1.0, 0.0, duration, 4, api_name="/refine")
    np.testing.assert_array_equal(read_wav(refined[0])[1], reference(1, 4))


def test_load_twenty_waiting_requests_are_all_answered_and_more_are_refused(app_module, models_dir, reference):
    """
    Two requests hold both generation slots (concurrency 2), twenty more wait (the queue's size), three more are
    refused at once with a clear message; then every accepted request gets the sound of its own seed and step count,
    although two of them always run at the same time.
    """
    app = app_module.SoundCTMApp(str(models_dir / "student"))
    demo = app.build(max_queue=20, concurrency=2)
    gate = Gate(app.student.get().transformer)
    duration = reference.max_duration
    with serve(demo, app_module) as url:
        client = Client(url, verbose=False)

        def submit(seed):
            return client.submit(PROMPT, "", seed, 5.0, 1.0, 0.0, duration, 1 + seed % 4, api_name="/refine")

        jobs = [submit(0), submit(1)]
        gate.wait_entered(2)
        jobs += [submit(seed) for seed in range(2, 22)]
        deadline = time.monotonic() + 60
        while not all(job.status().code == Status.IN_QUEUE for job in jobs[2:]):
            assert time.monotonic() < deadline, "the 20 requests did not all reach the queue"
            time.sleep(0.1)
        refused = [submit(seed) for seed in range(22, 25)]
        for job in refused:
            with pytest.raises(QueueError, match="Queue is full"):
                job.result(timeout=30)
        gate.open()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda job: job.result(timeout=120), jobs))
    for seed, result in enumerate(results):
        _, samples = read_wav(result[0])
        np.testing.assert_array_equal(samples, reference(seed, 1 + seed % 4), err_msg=f"request {seed}")
