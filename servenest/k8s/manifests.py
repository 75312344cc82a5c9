"""Manifests as YAML documents a person can read (and ``kubectl apply -f``)."""

from __future__ import annotations

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:  # no &id001 anchors in manifests
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Scripts (Job and container commands) print as block text, not one escaped line.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
