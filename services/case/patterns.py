"""Client-supplied regular expressions (`pattern`, `patternProperties` in a `resultSchema`) on a linear-time engine.

A client's pattern is matched against text a counterparty wrote, so it must never backtrack: every such pattern
is compiled and run with RE2 (`google-re2`), whose matching time is linear in the text whatever the pattern
(`(a+)+b` against "aaaa…c" is as cheap as any other). A pattern RE2 cannot compile (backreferences,
lookaround) is refused when the case is created, so nothing later falls back to Python's backtracking `re`.
Result validation uses a jsonschema validator whose `pattern` and `patternProperties` run on RE2 too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Final

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

_OPTIONS: Final = re2.Options()
# A refused pattern is answered as a 400; RE2 need not also log it to stderr.
_OPTIONS.log_errors = False
# RE2's default memory budget (8 MiB) per compiled pattern; a pattern needing more is refused at create.
_MAX_CACHED: Final = 256


class PatternError(ValueError):
    """RE2 cannot compile the pattern (unsupported syntax, or it needs more memory than allowed)."""


@functools.lru_cache(maxsize=_MAX_CACHED)
def compile_pattern(pattern: str) -> Any:
    """The compiled RE2 pattern, or PatternError saying why RE2 refuses it."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(detail) from None


def search(pattern: str, text: str) -> str | None:
    """The leftmost match of `pattern` in `text`, in linear time; None when there is none."""
    found = compile_pattern(pattern).search(text)
    return str(found.group()) if found is not None else None


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and compile_pattern(pattern).search(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, pattern_properties: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        compiled = compile_pattern(pattern)
        for name, value in instance.items():
            if compiled.search(name) is not None:
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """As jsonschema's, but a name is "covered by patternProperties" when an RE2 pattern matches it."""
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = [compile_pattern(pattern) for pattern in schema.get("patternProperties", {})]
    extras = sorted(
        name
        for name in instance
        if name not in properties and not any(compiled.search(name) is not None for compiled in patterns)
    )
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError(f"Additional properties are not allowed ({', '.join(map(repr, extras))} unexpected)")


# Draft 2020-12 with every regex keyword on RE2 (`unevaluatedProperties` next to `patternProperties` is refused at
# create, as jsonschema evaluates that pair with `re`); `format` stays an annotation, the draft's default.
ResultValidator: Final = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
