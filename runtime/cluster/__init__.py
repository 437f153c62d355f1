"""Many runtime processes as one application: membership, decisions, shared checkpoints."""
