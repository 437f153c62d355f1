"""What the compatibility tests share: an unchanged StateFun-style module.yaml for the
official-SDK and our-SDK function services, and a thin client of the runtime's ingress."""

from __future__ import annotations

import json
from typing import Any

import httpx

from statefun.module_spec import ModuleSpec, parse_module_spec

INT = "io.statefun.types/int"
PAYLOAD = "compat/Payload"


def statefun_module_yaml(official_url: str, ours_url: str, *, call: str = "3s") -> str:
    """A module.yaml as a StateFun user has it: no field of ours (no ``protocol``). The
    official SDK's functions behind the v2 endpoint kind, ours behind the v1 kind."""
    return f"""
kind: io.statefun.endpoints.v2/http
spec:
  functions: official/*
  urlPathTemplate: {official_url}
  transport:
    type: io.statefun.transports.v1/async
    call: {call}
    connect: 2s
---
kind: io.statefun.endpoints.v1/http
spec:
  functions: ours/*
  urlPathTemplate: {ours_url}
  timeouts:
    call: {call}
"""


def statefun_module(
    official_url: str, ours_url: str, *, call: str = "3s", extra: str = ""
) -> ModuleSpec:
    return parse_module_spec(statefun_module_yaml(official_url, ours_url, call=call) + extra)


def _post(
    http: httpx.Client, path: str, value: Any, typename: str | None, **params: Any
) -> httpx.Response:
    if typename is None:
        assert isinstance(value, str)
        return http.post(path, content=value, headers={"content-type": "text/plain"}, params=params)
    return http.post(
        path,
        content=json.dumps(value),
        headers={"content-type": "application/json"},
        params={"type": typename, **params},
    )


def send(http: httpx.Client, address: str, value: Any, typename: str | None = INT) -> None:
    """Send ``value`` to ``address``: JSON of type ``typename``, or a string as text
    (``typename`` None)."""
    answer = _post(http, f"/v1/messages/{address}", value, typename)
    assert answer.status_code == 202, answer.text


def call(http: httpx.Client, address: str, value: Any, typename: str | None = INT) -> Any:
    """Send ``value`` to ``address`` as :func:`send` does; the reply's value (as JSON)."""
    answer = _post(http, f"/v1/call/{address}", value, typename, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["value"]


def state(http: httpx.Client, address: str) -> dict[str, Any]:
    """The address's state values by name (as JSON)."""
    answer = http.get(f"/v1/state/{address}")
    assert answer.status_code == 200, answer.text
    return {name: v["value"] for name, v in answer.json()["state"].items()}
