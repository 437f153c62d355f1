"""Fixtures the integration tests share: the test functions served over HTTP, with a
``control`` dict a test fills to steer them (a module may define its own instead)."""

from collections.abc import Iterator
from typing import Any

import pytest
from functions import make_test_functions
from support import serve


@pytest.fixture
def control() -> dict[str, Any]:
    return {}


@pytest.fixture
def functions_url(control: dict[str, Any]) -> Iterator[str]:
    with serve(make_test_functions(control).asgi_app()) as server:
        yield f"{server.url}/statefun"
