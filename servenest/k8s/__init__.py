"""Kubernetes objects for the ack topology (rendered here; applied by the topology)."""
