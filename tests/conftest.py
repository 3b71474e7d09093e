"""Shared fixtures: everything offline, tiny models built once per session in a temp dir."""

import os

# Set before transformers is imported anywhere: tests must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest
import torch

from clo_lib import tiny

torch.set_num_threads(2)


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
    from clo_lib import toyworld

    out = tmp_path_factory.mktemp("world")
    toyworld.build(out, seed=0, epochs=8, log=lambda m: None)
    return out
