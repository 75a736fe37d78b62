"""The configuration table of the README from the settings classes: every variable, its default, the services
that read it and what it does (`shared.settings.SETTING_HELP`). `python -m deploy.settings_table` rewrites it
between the README's `settings-table` markers (`--check`: fail if stale); a test keeps the README in step."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from deploy.generated import write_or_check
from shared.settings import SETTING_HELP, SETTINGS_BY_SERVICE, env_var


def _default(field: msgspec.structs.FieldInfo) -> str:
    value = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    if isinstance(value, list):
        value = ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    elif isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, float):
        value = f"{value:g}"
    text = str(value)
    if not text:
        return "(empty)"
    return f"`{text}`" if len(text) <= 40 else f"`{text[:37]}…`"


def settings_table() -> str:
    rows: dict[str, tuple[str, list[str]]] = {}
    for service, settings in SETTINGS_BY_SERVICE.items():
        for field in msgspec.structs.fields(settings):
            name = env_var(field.name)
            default, users = rows.setdefault(name, (_default(field), []))
            users.append(service)
    every_service = len(SETTINGS_BY_SERVICE)
    lines = ["| variable | default | read by | what it does |", "|---|---|---|---|"]
    for name, (default, users) in rows.items():
        readers = "all" if len(users) == every_service else ", ".join(users)
        lines.append(f"| `{name}` | {default} | {readers} | {SETTING_HELP[name]} |")
    return "\n".join(lines)


ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"


def readme_with_table(readme: str) -> str:
    """`readme` with the text between its settings-table markers replaced by the current table."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}{settings_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the README's table is stale")
    args = parser.parse_args(argv)
    files = [(README, readme_with_table(README.read_text()))]
    return write_or_check(files, check=args.check, root=ROOT, command="python -m deploy.settings_table")


if __name__ == "__main__":
    sys.exit(main())
