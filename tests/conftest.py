import gc

import pytest
import torch

import polyverse
from polyverse.models.tiny import save_tiny

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _own_costs(tmp_path_factory):
    """Pass-cost curves measured during the tests (the bundled model's among them) go to a folder of
    the run's own: a curve is kept for good, and one timed beside the suite must not price the
    drafts of later commands on this machine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYVERSE_COSTS", str(tmp_path_factory.mktemp("costs")))
        yield


@pytest.fixture(autouse=True)
def _thawed():
    """Commands freeze the interpreter's objects (``heap.freeze``) in the process they own: here that
    is the test run's, so each test leaves them thawed for the next."""
    yield
    gc.unfreeze()


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


@pytest.fixture(scope="module")
def srv(tiny):
    """The real server on the tiny model (ar, 4 slots, a queue of 8), for a test module."""
    from server_util import running

    with running(tiny, method="ar", max_concurrent=4, max_queue=8) as r:
        yield r


@pytest.fixture(scope="module")
def client(srv):
    """The official openai client against ``srv``."""
    import openai

    return openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=30)
