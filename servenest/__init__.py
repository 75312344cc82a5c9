"""ServeNest: deploy LLM services as Prefect pipelines and prove them before anyone depends on them."""

__version__ = "0.1.0"
