"""The agent port: writes the emails and judges the replies. Backends: `rules` (default) and `openai`."""
