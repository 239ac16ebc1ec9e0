import pytest
import torch

import polyverse
from polyverse.models.tiny import save_tiny

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random model with a character tokenizer, saved as an HF directory."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=3)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return polyverse.load(str(tiny_dir), progress=False)


@pytest.fixture(scope="session")
def bundled():
    return polyverse.load(progress=False)
