"""Many runtime processes over Kafka as one application: membership, decisions, checkpoints."""
