"""What the ingress's routes read of a request (runtime.ingress_request): the query
parameters, parsed once per distinct short query string and kept within a bound."""

from __future__ import annotations

import pytest

from runtime import ingress_request
from runtime.ingress_request import IngressRequest


async def _no_body() -> dict[str, object]:
    return {"type": "http.request", "body": b""}


def _request(query: bytes) -> IngressRequest:
    return IngressRequest({"type": "http", "query_string": query, "headers": []}, _no_body)


def test_query_parameters_are_read_as_parse_qsl_reads_them() -> None:
    request = _request(b"type=a%2Fb&empty=&type=c%2Fd&x=%E2%9C%93")
    assert request.query_items() == (
        ("type", "a/b"),
        ("empty", ""),
        ("type", "c/d"),
        ("x", "\u2713"),
    )
    assert request.query("type") == "c/d"  # the last of a name
    assert request.query("empty") == ""
    assert request.query("missing") is None
    assert _request(b"").query("type") is None


def test_parsed_queries_are_kept_only_when_short_and_only_so_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingress_request, "_QUERIES", {})
    monkeypatch.setattr(ingress_request, "_QUERIES_KEPT", 3)
    for i in range(5):
        assert _request(b"n=%d" % i).query("n") == str(i)
    assert list(ingress_request._QUERIES) == [b"n=0", b"n=1", b"n=2"]
    assert _request(b"n=4").query("n") == "4"  # parsed all the same
    long = b"v=" + b"x" * ingress_request._QUERY_KEPT_BYTES
    monkeypatch.setattr(ingress_request, "_QUERIES", {})
    assert _request(long).query("v") == "x" * ingress_request._QUERY_KEPT_BYTES
    assert not ingress_request._QUERIES
