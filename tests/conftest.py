import pytest
import torch

from fade_core.digits.model import load_pipeline, make_adapter


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def pipeline():
    """A fresh copy of the embedded model: tests attach LoRAs to it."""
    return load_pipeline()


@pytest.fixture
def adapter(pipeline):
    return make_adapter(pipeline)
