"""The I/O selector every kafka-python client of the runtime waits on.

kafka-python's network loop registers a socket for each wait on it, asking the selector
first whether it is registered already (``get_key``), which it usually is not. The
standard library's selectors answer that miss with a ``KeyError`` whose message holds
the socket's ``repr``, formatted twice; a socket's ``repr`` asks the kernel for both of
its addresses. Measured in a Kafka-mode profile of the runtime, that was 8-12% of the
samples of every kafka-python I/O thread, for an exception nobody reads.
:class:`QuietSelector` misses without formatting anything: 7 us against 19 us for a
miss, a registration and an unregistration (measured on the machine of
``bench/README.md``). Everything else is the platform's default selector.
"""

from __future__ import annotations

import selectors
from typing import Any

__all__ = ["CLIENT_CONFIG", "QuietSelector"]


class QuietSelector(selectors.DefaultSelector):
    """The default selector, whose ``get_key`` misses with a ``KeyError`` holding the
    file object itself (formatted only if someone prints it)."""

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        # The same lookup as the standard library's (a closed socket raises ValueError
        # there as here), less the message.
        try:
            key: selectors.SelectorKey = self._fd_to_key[self._fileobj_lookup(fileobj)]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(fileobj) from None
        return key


CLIENT_CONFIG: dict[str, Any] = {"selector": QuietSelector}
"""Settings every kafka-python client of the runtime takes."""
