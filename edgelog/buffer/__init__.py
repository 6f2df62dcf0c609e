"""The local store: every reading becomes durable here before anything else happens to it.

`store.py` has the face (`Buffer`) and the durability guarantee, and lists the
module of each concept behind it.
"""

from .errors import BufferCorrupt, BufferFull
from .read import BufferStatus, Latest, Poll, Span
from .schema import FIXED_COLUMNS
from .space import Space, Stored
from .store import Buffer, NewReading

__all__ = [
    "FIXED_COLUMNS",
    "Buffer",
    "BufferCorrupt",
    "BufferFull",
    "BufferStatus",
    "Latest",
    "NewReading",
    "Poll",
    "Space",
    "Span",
    "Stored",
]
