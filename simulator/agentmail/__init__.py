"""An in-memory AgentMail double: the `/v0` subset the adapter uses, Svix-signed webhooks, scripted counterparties.

Run it with `python -m simulator.agentmail`. It is a development and test tool, not a service: it keeps all state
in memory, and its `/_sim` control API (inject mail, emit delivery events, inject faults, reset) has no auth.
"""
