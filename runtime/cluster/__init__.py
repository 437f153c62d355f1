"""Many runtime processes over Kafka as one application: membership, decisions, checkpoints,
and the peers that serve each other's requests."""
