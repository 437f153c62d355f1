"""The runtime processes of one application working as one cluster over Kafka."""
