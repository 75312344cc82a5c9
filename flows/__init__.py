"""Prefect flows: thin sequences of tasks, the same for every topology."""
