"""The README is executable: its quickstart runs against a live stack, its configuration table is the one the
code generates, and its model examples are settings the case service accepts."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import msgspec

from deploy.processes import ROOT, Stack, free_port
from deploy.settings_table import settings_table
from shared.settings import SETTING_HELP, SETTINGS_BY_SERVICE, CaseSettings, env_var, load_settings
from tests.support.api import new_client
from tests.support.fake_openai import BEHAVIOURS

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_the_quickstart_runs_end_to_end(stack: Stack, tmp_path: Path) -> None:
    script = "\n".join(bash_blocks(section("Quickstart")))
    assert "curl" in script
    env = {
        **os.environ,
        "CASEFLOW_URL": stack.gateway_url,
        "CASEFLOW_API_KEY": new_client(stack)["apiKey"],
        "HOOK_PORT": str(free_port()),
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    output = result.stdout
    assert re.search(r"^case [0-9a-f-]{36}$", output, flags=re.M)
    assert "PDF signed electronically" in output  # the counterparty's question, asked through the client
    assert '"accepted": true' in output
    assert '"resultStatus": "goal_achieved"' in output
    assert "%PDF" in output
    assert "case.completed" in output
    assert (tmp_path / "w9.pdf").read_bytes().startswith(b"%PDF")


def test_the_configuration_table_is_generated_from_the_settings() -> None:
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    in_readme = README[README.index(start) + len(start) : README.index(end)]
    assert in_readme == settings_table()


def test_every_setting_is_explained() -> None:
    variables = {env_var(field.name) for cls in SETTINGS_BY_SERVICE.values() for field in msgspec.structs.fields(cls)}
    assert set(SETTING_HELP) == variables


def test_the_model_examples_are_accepted_settings() -> None:
    text = section("Using a real model")
    examples = [line for line in bash_blocks(text)[0].splitlines() if "make run" in line]
    assert len(examples) == 6  # OpenAI, vLLM, Ollama, llama-server, llama-cpp-python, LM Studio
    tested = "|".join(re.escape(behaviour.name) for behaviour in BEHAVIOURS)
    for server in ("OpenAI", "vLLM", "Ollama", "llama.cpp `llama-server`", "llama-cpp-python", "LM Studio"):
        row = rf"^\| {re.escape(server)} .*\| `({tested})`"
        assert re.search(row, text, flags=re.M), f"{server} has no row naming the fake behaviour it was tested against"
    for line in examples:
        words = shlex.split(line)
        env = dict(word.split("=", 1) for word in words[: words.index("make")])
        settings = load_settings(CaseSettings, env)
        assert settings.agent_backend == "openai"
        assert settings.openai_base_url.endswith("/v1")
