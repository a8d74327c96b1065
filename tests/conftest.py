"""Shared pytest fixtures: the shared data folder (skip when absent) and seeding."""
import pytest
import torch

from cl_detect._shared import shared_dir


@pytest.fixture(scope="session")
def shared():
    path = shared_dir()
    if path is None:
        pytest.skip("shared data not found: set CL_DETECT_SHARED or place ../shared beside the checkout")
    return path


@pytest.fixture(scope="session")
def shared_data(shared):
    return shared / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
