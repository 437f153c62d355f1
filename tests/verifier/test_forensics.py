"""The verifier's trace of missing commands names a record by its own command, not by
the commands nested in it."""

from __future__ import annotations

import json

from runtime.envelope import Envelope
from runtime.log import StoredRecord
from statefun.address import Address
from statefun.values import TypedValue
from verifier.commands import COMMAND_TYPE
from verifier.forensics import _command_id


def stored(value: bytes) -> StoredRecord:
    record = Envelope(
        Address("verify", "counter", "a1"), None, TypedValue(COMMAND_TYPE, value)
    ).to_record()
    return StoredRecord(0, record.value, record.key, record.headers, 0)


def test_a_record_is_named_by_its_own_command() -> None:
    parent = {"id": "7.0", "ops": [{"op": "send", "to": "a2", "cmd": {"id": "7.1", "ops": []}}]}
    assert _command_id(stored(json.dumps(parent).encode())) == "7.0"


def test_a_record_that_is_no_command_names_none() -> None:
    assert _command_id(stored(b"[1, 2]")) is None
    assert _command_id(stored(b"not json")) is None
    assert _command_id(StoredRecord(0, b"\x01garbage", None, (), 0)) is None
