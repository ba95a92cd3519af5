"""The one registry style (timm's ``register_model``): things built by name are put in a
table by a decorator, ``@register("name")``, and looked up there."""

from __future__ import annotations


def registrar(table: dict):
    """A decorator factory for ``table``: ``register = registrar(TABLE)``, then
    ``@register("name")`` on a class or function stores it as ``TABLE["name"]``."""
    def register(name: str):
        def deco(obj):
            if name in table:
                raise ValueError(f"{name!r} is registered twice")
            table[name] = obj
            return obj
        return deco
    return register
