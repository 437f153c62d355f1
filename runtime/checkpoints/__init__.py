"""Global consistent checkpoints: epochs and record tags, local snapshots, the
checkpoint store, the coordinator, and rollback (see ``docs/architecture.md``)."""
