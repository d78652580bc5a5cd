import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_guard_global_state():
    """Fixed seeds; and no test (or the code under test) may change torch's default dtype."""
    torch.manual_seed(0)
    np.random.seed(0)
    before = torch.get_default_dtype()
    yield
    assert torch.get_default_dtype() == before, "torch's global default dtype was changed"
