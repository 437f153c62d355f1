"""The fault suite (``python -m verifier.faults``): each fault of the availability issue
injected, on the embedded log and on Kafka, while a steady load runs on healthy
addresses; per fault, the healthy throughput during the fault against before it, the
time until the poison is parked or service resumes, the ``/ready`` transitions and an
exact count at the end. See ``verifier/README.md``."""
