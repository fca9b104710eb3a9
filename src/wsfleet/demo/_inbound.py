"""What a page sends, read as anyone could have written it: the chat's and the dashboard's.

Anyone who reaches the port can send anything up to the server's frame limit, so both
sockets decode their requests here, and whatever cannot be read is answered in words a
person understands (``not JSON: send a JSON object such as {"op": "who"}``), never with
Python's own error text and never by ending the handler:

* ``json.loads`` recurses once per level of nesting, so 60,000 ``[`` in a row raise
  ``RecursionError``, which is not a ``ValueError``; it is caught here, and only here;
* a binary frame that is not UTF-8, or a number of more digits than Python converts, is a
  ``ValueError`` that says nothing useful to the sender.

A value a client sent is never echoed back whole: ``shown`` cuts it (an ``op`` of 16,000
emoji would otherwise make the error reply larger than any message the manager sends).
"""

from __future__ import annotations

import json
import reprlib
from typing import Final

from ..transport import Message

__all__ = ["Unreadable", "decode", "shown"]

#: How many characters of a client's value an error message repeats.
SHOWN: Final = 40

_repr = reprlib.Repr()
_repr.maxstring = SHOWN
_repr.maxother = SHOWN
_repr.maxlong = SHOWN
_repr.maxlevel = 2
for _name in ("maxdict", "maxlist", "maxtuple", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_repr, _name, 4)


class Unreadable(ValueError):
    """A message that is no JSON the server can read; its text goes back to the sender."""


def decode(message: Message, example: str) -> object:
    """The JSON value in ``message``; ``Unreadable`` (saying what to send) if there is none.

    ``example`` is a request the sender could send instead, shown in the error.
    """
    advice = f"send a JSON object such as {example}"
    try:
        return json.loads(message)
    except RecursionError:
        raise Unreadable(f"nested too deeply: {advice}") from None
    except UnicodeDecodeError:
        raise Unreadable(f"not UTF-8 text: {advice}") from None
    except json.JSONDecodeError:
        raise Unreadable(f"not JSON: {advice}") from None
    except ValueError:  # valid JSON Python will not convert (a number of 5,000 digits)
        raise Unreadable(f"JSON this server cannot read: {advice}") from None


def shown(value: object) -> str:
    """``value`` as an error message may repeat it: its ``repr``, cut to a few characters."""
    return _repr.repr(value)
