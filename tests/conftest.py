import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from softhebb.data import DATA_ENV


@pytest.fixture
def data_root() -> Path:
    """Real data root from $SOFTHEBB_DATA; skipped when unset unless $SOFTHEBB_REQUIRE_DATA=1 makes that a failure."""
    value = os.environ.get(DATA_ENV)
    if not value:
        if os.environ.get("SOFTHEBB_REQUIRE_DATA") == "1":
            pytest.fail(f"SOFTHEBB_REQUIRE_DATA=1 but ${DATA_ENV} is not set")
        pytest.skip(f"${DATA_ENV} not set: no real MNIST/CIFAR-10 data root to test against")
    return Path(value)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may touch the network: any download attempt fails at once, as it would offline."""
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls
