"""Files generated from the code and committed: write them, or (`--check`) report the ones that are stale.

Design decision: a generator only renders text; writing and checking are here, once, so every generated file
(deploy/nats.conf, the Helm values, the Kubernetes manifests) is compared byte for byte the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path


def write_or_check(files: Iterable[tuple[Path, str]], *, check: bool, root: Path, command: str) -> int:
    """Write every (path, text), or with `check` write nothing and return 1 when any differs (naming them and
    `command`, which regenerates them, on stderr)."""
    stale = []
    for path, text in files:
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(root)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run `{command}`", file=sys.stderr)
        return 1
    return 0
