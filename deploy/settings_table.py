"""Print the configuration table of the README from the settings classes: every variable, its default, the
services that read it and what it does (`shared.settings.SETTING_HELP`). A test keeps the README in step."""

from __future__ import annotations

import msgspec

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


if __name__ == "__main__":
    print(settings_table())
