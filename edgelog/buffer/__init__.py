"""The local store: every reading becomes durable here before anything else happens to it.

See `store.py` for the durability guarantee and the pragmas that give it.
"""

from .store import FIXED_COLUMNS, Buffer, BufferStatus

__all__ = ["FIXED_COLUMNS", "Buffer", "BufferStatus"]
