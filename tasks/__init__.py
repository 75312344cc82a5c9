"""Prefect tasks: small, named for what they do, each a thin call into ``servenest``."""
