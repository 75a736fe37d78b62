"""The base of every stored shape, and how one becomes a MongoDB document.

Design decision a reader must know: every service's records (`<service>/model.py`) are msgspec Structs with the
same options as the API's contracts: frozen, keyword-only, camelCase in MongoDB like on the wire. Bytes stay
bytes (BSON binary), never base64 text.
"""

from __future__ import annotations

import msgspec

from shared.mongo import Document


class Record(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base for stored shapes (camelCase in MongoDB, like the API)."""


def to_document(record: msgspec.Struct) -> Document:
    document: Document = msgspec.to_builtins(record, builtin_types=(bytes,))
    return document
