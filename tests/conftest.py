"""Shared fixtures: everything offline, tiny models built once per session in a temp dir."""

import os

# Set before transformers is imported anywhere: tests must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path

import pytest
import torch

from clo_lib.modeling import tiny

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
# What the suite may leave in the checkout: the venv and what installing and running Python make.
NOT_CHECKED = {".git", ".venv", ".venv-gpu-stack", ".deepspeed", "__pycache__", ".pytest_cache", ".ruff_cache"}


def checkout_files(root: Path = REPO) -> dict[str, tuple[int, int]]:
    """Every file of the checkout, tracked or not (git-ignored outputs/ included), by path: (size, mtime)."""
    found = {}
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if any(part in NOT_CHECKED or part.endswith(".egg-info") for part in parts) or not path.is_file():
            continue
        stat = path.stat()
        found["/".join(parts)] = (stat.st_size, stat.st_mtime_ns)
    return found


def checkout_changes(before: dict, after: dict) -> list[str]:
    return sorted([f"added {p}" for p in after.keys() - before.keys()] +
                  [f"removed {p}" for p in before.keys() - after.keys()] +
                  [f"changed {p}" for p in before.keys() & after.keys() if before[p] != after[p]])


# The slow tier: end-to-end runs (executed notebooks, grids, two runners, real packaged models, benchmarks).
# `make test-fast` (pytest -m "not slow") leaves them out for the inner loop; `make test` and CI run everything.
SLOW_FILES = {"test_notebooks.py", "test_grid.py", "test_lock_stages.py", "test_real_models.py", "test_bench.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session):
    session.config.stash["checkout"] = checkout_files()


def pytest_sessionfinish(session, exitstatus):
    """Tests write only under pytest's tmp dirs: the suite fails when it left the checkout otherwise than it found
    it (the notebook tests once pretrained the full toy world into outputs/toy/world)."""
    changes = checkout_changes(session.config.stash["checkout"], checkout_files())
    if changes:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = f"the test suite wrote into the checkout ({len(changes)} files): " + ", ".join(changes[:10])
        if reporter:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder factory: tiny_model_dir("llama") -> path of a saved tiny decoder (built once per arch)."""
    root = tmp_path_factory.mktemp("tiny_models")
    built = {}

    def build(arch: str = "llama"):
        if arch not in built:
            if arch in tiny.DECODER_ARCHS:
                built[arch] = tiny.make_tiny_causal_lm(root / arch, arch)
            else:
                built[arch] = tiny.make_tiny_seq2seq(root / arch, arch)
        return built[arch]

    return build


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """The toy world with a briefly pretrained base model (8 epochs, about 15 s): enough to show its bias."""
    from clo_lib.toy import build as toy_build

    out = tmp_path_factory.mktemp("world")
    toy_build.build(out, seed=0, epochs=8, log=lambda m: None)
    return out


@pytest.fixture
def chat_stub():
    """Start an OpenAI-compatible chat endpoint on loopback: chat_stub(answer) -> (base_url, requests).

    `answer(body)` returns the assistant's text, or an int HTTP status to fail with. Every request's body and
    Authorization header are recorded in `requests`.
    """
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    servers = []

    def start(answer):
        requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append({"auth": self.headers.get("Authorization"), "body": body})
                reply = answer(body)
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1", requests

    yield start
    for server in servers:
        server.shutdown()
