"""`make docs` rewrites the README's settings table between its markers; `--check` fails when it is stale."""

from __future__ import annotations

from deploy import settings_table


def test_the_committed_readme_table_is_current() -> None:
    assert settings_table.main(["--check"]) == 0


def test_rewriting_replaces_only_the_text_between_the_markers() -> None:
    readme = f"intro\n{settings_table.START}stale table{settings_table.END}\nrest\n"
    rewritten = settings_table.readme_with_table(readme)
    assert rewritten == f"intro\n{settings_table.START}{settings_table.settings_table()}{settings_table.END}\nrest\n"
    assert settings_table.readme_with_table(rewritten) == rewritten
