"""Benchmarking that gives vLLM's numbers (``vllm bench serve``), kept apart as vLLM keeps it:
datasets (what to send), schedule (when), request functions and load runner (how), and
metrics (what it means). Definitions: ../shared/reference/benchmarking.md.
"""
