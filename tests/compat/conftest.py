"""Fixtures of the compatibility tests: the official StateFun SDK's virtualenv, its
function service, our SDK's function service, and the runtime's logs to run them on."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from official_sdk import LATEST, OFFICIAL_FUNCTIONS, FunctionService, official_sdk_python
from our_functions import app as our_app
from support import serve, unique_app_id


def sdk_root(config: pytest.Config) -> Path:
    """Where the official SDK's virtualenvs live: pytest's cache, kept between runs."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("official-statefun-sdk"))
    return Path(tempfile.gettempdir()) / "pystatefun-official-statefun-sdk"


@pytest.fixture(scope="session")
def official_python(pytestconfig: pytest.Config) -> Path:
    """The python of a virtualenv with the official SDK (the latest release) installed."""
    return official_sdk_python(sdk_root(pytestconfig), LATEST)


class OfficialFunctions(FunctionService):
    """``official_functions.py`` served by the official SDK; :attr:`flaky_flag` is the file
    whose existence makes ``official/flaky`` fail."""

    def __init__(self, python: Path, log_dir: Path):
        self.flaky_flag = log_dir / "flaky-fails"
        super().__init__(python, OFFICIAL_FUNCTIONS, log_dir, FLAKY_FLAG=str(self.flaky_flag))


@pytest.fixture(scope="session")
def official(
    official_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OfficialFunctions]:
    """The official-SDK functions, one service for the session (state lives in runtimes)."""
    with OfficialFunctions(official_python, tmp_path_factory.mktemp("official")) as service:
        yield service


@pytest.fixture(scope="session")
def ours_url() -> Iterator[str]:
    """The URL of our SDK's functions (``our_functions.py``)."""
    with serve(our_app) as server:
        yield f"{server.url}/statefun"


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def own_log(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Runtime settings for its own log: the embedded log (SQLite), or Kafka."""
    if request.param == "kafka":
        return {"kafka": request.getfixturevalue("kafka_bootstrap"), "app_id": unique_app_id()}
    return {"data_dir": request.getfixturevalue("tmp_path") / "data"}
