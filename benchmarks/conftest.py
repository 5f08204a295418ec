import os

import pytest

SMOKE = os.environ.get("MYQ_BENCH_SMOKE") == "1"


@pytest.fixture(scope="session")
def smoke():
    return SMOKE
