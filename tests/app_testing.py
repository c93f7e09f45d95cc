"""Shared by the app's tests: tiny SoundCTM models saved in the bundled layout, reference sounds, the app on loopback."""

import contextlib
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from soundctm import SoundCTMPipeline
from tiny_models import tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a dog barks"


def load_app_module(name: str = "app"):
    """`app.py` at the repository root, imported under `name` (a fresh module each call)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def save_tiny_models(root: Path) -> Path:
    """A tiny student and teacher saved as `root/student` and `root/teacher` (the bundled demo's layout)."""
    tiny_pipeline(student=True).save_pretrained(root / "student")
    tiny_pipeline(student=False).save_pretrained(root / "teacher")
    return root


class Reference:
    """Sounds made by pipelines loaded on their own (not the app's), to check what the app returns."""

    def __init__(self, root: Path):
        self.pipes = {kind: SoundCTMPipeline.from_pretrained(root / kind) for kind in ("student", "teacher")}
        for pipe in self.pipes.values():
            pipe.set_progress_bar_config(disable=True)

    def __call__(self, seed: int, steps: int, kind: str = "student", prompt: str = PROMPT, **kwargs) -> np.ndarray:
        """int16 samples, as the page gets them."""
        pipe = self.pipes[kind]
        audio = pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kwargs).audios[0]
        return np.round(np.clip(audio[0], -1.0, 1.0) * 32767.0).astype(np.int16)

    @property
    def max_duration(self) -> float:
        return float(self.pipes["student"].max_audio_length_in_s)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads make them ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def app_module():
    return load_app_module()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return save_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference(models_dir) -> Reference:
    return Reference(models_dir)


@pytest.fixture(scope="module")
def soundctm_app(app_module, models_dir):
    """The app on the tiny student and (found beside it) the tiny teacher."""
    return app_module.SoundCTMApp(*app_module.resolve_models(str(models_dir)))


@contextlib.contextmanager
def serve(demo, app_module):
    """Serves a built demo on 127.0.0.1 (a free port) as `python app.py` does; yields its URL, then closes it."""
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, css=app_module.CSS, **app_module.LAUNCH_KWARGS)
    try:
        yield demo.local_url
    finally:
        demo.close()


class Gate:
    """Holds every forward pass of a model until `open()`: a real PyTorch hook that keeps requests busy on demand."""

    def __init__(self, model: torch.nn.Module):
        self._open = threading.Event()
        self._entered = threading.Semaphore(0)
        self._handle = model.register_forward_pre_hook(self._wait)

    def _wait(self, module, args):
        self._entered.release()
        self._open.wait()

    def wait_entered(self, count: int, timeout: float = 60.0) -> None:
        """Blocks until `count` forward passes are being held."""
        for _ in range(count):
            if not self._entered.acquire(timeout=timeout):
                raise TimeoutError("no request reached the model")

    def open(self) -> None:
        self._open.set()
        self._handle.remove()
