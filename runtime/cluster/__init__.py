"""One application over many runtime processes: membership, the decision log, the cluster checkpoint coordinator, the partition checkpoint store and peers."""
