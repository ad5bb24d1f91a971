"""Shared fixtures: one embedded Ray per test session, the shared public data, the tiny models, temp storage
roots. Plain helpers shared by test modules are in fixtures.py."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest


def _session_ray_token() -> str:
    """A token made for this test session, in a private temporary file removed at exit. Ray 2.60 writes a
    token it generates to ~/.ray/auth_token whatever RAY_AUTH_TOKEN_PATH says, so the session brings its
    own: the user's ~/.ray is never read or written."""
    folder = tempfile.mkdtemp(prefix="valley-test-ray-auth-")  # mode 0700
    path = os.path.join(folder, "auth_token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secrets.token_hex(32))
    atexit.register(shutil.rmtree, folder, True)
    return path


# Ray as users get it: Ray 2.60 turns token authentication on for every new local cluster (`ray.init()`)
# unless RAY_AUTH_MODE says otherwise, and for `ray start --head` wherever a token exists. Set here, before
# any test imports Ray, so that the session's embedded cluster, the clusters tests start in subprocesses
# (which inherit this environment) and their clients all use this session's token. A test that needs Ray
# without it says why where it opts out.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.pop("RAY_AUTH_TOKEN", None)  # read before RAY_AUTH_TOKEN_PATH: a user's own token must not win
os.environ["RAY_AUTH_TOKEN_PATH"] = _session_ray_token()
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VALLEY_RAW_STDERR", "1")  # the CLI leaves fd 2 alone under pytest (capfd owns it); tested on its own

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def ray_local():
    """An embedded local Ray cluster shared by the whole test session (2 CPUs like CI)."""
    from valley import runtime

    runtime.init(num_cpus=2)
    yield
    runtime.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lcb_file(shared_data: Path) -> str:
    """LCB release v6 problems with public tests (the generate stage tests' problems)."""
    return str(shared_data / "lcb" / "refined_test6.jsonl")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The demo's tiny random Qwen2 student (a Hugging Face directory), built once per test session."""
    from valley.demo import build_demo_tokenizer, build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return str(build_tiny_model(root / "model", build_demo_tokenizer(root / "tok")))


@pytest.fixture(scope="session")
def tiny_train_model(tmp_path_factory) -> tuple[Path, Path]:
    """(tokenizer dir, model dir) of the training tests' student: hidden 32, 2 layers (fixtures.py), once per
    test session; smaller than `tiny_model` so two-worker ZeRO-3 runs stay quick on CPU."""
    from fixtures import build_tiny_train_model

    return build_tiny_train_model(tmp_path_factory.mktemp("tiny-train"))


@pytest.fixture()
def storage(tmp_path):
    from valley.storage import Storage

    return Storage(str(tmp_path / "store"))
