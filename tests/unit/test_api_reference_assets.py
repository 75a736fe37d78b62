"""The API reference's pinned Swagger UI: the files shipped are the ones whose hashes its README records (so an
upgrade is deliberate and reviewable), every asset the gateway serves exists, and the licence ships with them."""

from __future__ import annotations

import hashlib
import re

from services.gateway.assets import STATIC_DIR
from services.gateway.routes.docs import ASSETS

PINNED = STATIC_DIR / "swagger-ui"


def recorded_hashes() -> dict[str, str]:
    readme = (PINNED / "README.md").read_text()
    return dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", readme, re.MULTILINE))


def test_the_shipped_files_are_the_pinned_ones() -> None:
    recorded = recorded_hashes()
    assert set(recorded) == {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
    for name, digest in recorded.items():
        assert hashlib.sha256((PINNED / name).read_bytes()).hexdigest() == digest, name
    assert "swagger-ui-dist@5.35.0" in (PINNED / "README.md").read_text()


def test_every_served_asset_exists_and_the_licence_ships_with_them() -> None:
    for name, (path, content_type) in ASSETS.items():
        assert path.is_file(), name
        assert path.is_relative_to(STATIC_DIR)
        assert content_type
    assert "Apache License" in (PINNED / "LICENSE").read_text()
