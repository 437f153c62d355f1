"""Runs ``ToFunction`` requests through the official SDK's ``RequestReplyHandler`` (the
one ``official_functions.py`` serves), without HTTP: each request on stdin and each
``FromFunction`` answer on stdout is a 4-byte big-endian length and the bytes. An
exception in a function is answered with length 0xFFFFFFFF.

This module runs in the official SDK's own virtualenv (see ``official_sdk.py``).
"""

import struct
import sys

from official_functions import handler

FAILED = 0xFFFFFFFF


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while header := stdin.read(4):
        (size,) = struct.unpack(">I", header)
        request = stdin.read(size)
        try:
            answer = handler.handle_sync(request)
        except Exception:
            stdout.write(struct.pack(">I", FAILED))
        else:
            stdout.write(struct.pack(">I", len(answer)) + answer)
    stdout.flush()


if __name__ == "__main__":
    main()
