"""Everything that touches a socket or Redis.

Each adapter is its own submodule and imports its library only when imported itself, so
``import wsfleet`` stays free of optional dependencies.
"""

__all__: list[str] = []
