"""The exactly-once verifier: random command trees, an oracle, and faults (``kill -9``
of the runtime, endpoint errors and timeouts, the function server restarted), in the
spirit of StateFun's smoke test. Run it with ``python -m verifier`` (see README.md)."""
