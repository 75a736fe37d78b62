"""The console's building blocks without a stack: sessions are sealed (the API key is not in the cookie, a forged,
edited, foreign-key or expired token opens to nothing, rotation keeps old sessions), CSRF tokens compare exactly,
the pinned htmx is the recorded one, and the templates render counterparty text as text."""

from __future__ import annotations

import hashlib
import re
import time

import msgspec
import pytest
from cryptography.fernet import Fernet

from services.gateway.assets import STATIC_DIR
from services.gateway.console.pages import ASSETS
from services.gateway.console.render import environment, utc_time
from services.gateway.console.session import ConsoleSession, SessionSealer, tokens_match
from shared.contracts import case as contract
from shared.contracts import webhook
from shared.contracts.case import NOTHING_SCHEDULED
from shared.settings import GatewaySettings, SettingsError, load_settings

API_KEY = "cf_live_0123456789abcdef0123456789abcdef"
HOSTILE = '<script>window.pwned = 1</script><a href="javascript:alert(1)">click</a>'


def sealer(*keys: str, lifetime: int = 3600) -> SessionSealer:
    return SessionSealer(list(keys), lifetime_seconds=lifetime)


def test_a_sealed_session_opens_only_intact_and_never_shows_the_key() -> None:
    key = Fernet.generate_key().decode()
    session = ConsoleSession(api_key=API_KEY, csrf="csrf-token")
    token = sealer(key).seal(session)

    assert API_KEY not in token
    assert "csrf-token" not in token
    assert sealer(key).open(token) == session
    edited = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    assert sealer(key).open(edited) is None
    assert sealer(Fernet.generate_key().decode()).open(token) is None
    assert sealer(key).open("not-a-token") is None
    assert sealer(key).open("ünïcode") is None
    assert sealer(key).open(None) is None


def test_an_old_session_expires_and_rotation_keeps_sessions_sealed_with_the_previous_key() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    session = ConsoleSession(api_key=API_KEY, csrf="c")
    issued_long_ago = Fernet(old.encode()).encrypt_at_time(b'{"api_key":"k","csrf":"c"}', int(time.time()) - 7200)

    assert sealer(old, lifetime=3600).open(issued_long_ago.decode()) is None
    assert sealer(new, old).open(sealer(old).seal(session)) == session


def test_csrf_tokens_must_match_exactly() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abd", "abc")
    assert not tokens_match("", "abc")
    assert not tokens_match(None, "abc")


def test_session_keys_are_fernet_keys_and_the_default_is_refused_in_production() -> None:
    with pytest.raises(SettingsError, match="CONSOLE_SESSION_KEYS"):
        load_settings(GatewaySettings, {"CONSOLE_SESSION_KEYS": "short"})
    with pytest.raises(SettingsError, match="must be set in production"):
        load_settings(GatewaySettings, {"CASEFLOW_ENV": "production"})


def test_the_shipped_htmx_is_the_pinned_one_with_its_licence() -> None:
    readme = (STATIC_DIR / "htmx" / "README.md").read_text()
    recorded = dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", readme, re.MULTILINE))
    assert recorded == {"htmx.min.js": hashlib.sha256((STATIC_DIR / "htmx" / "htmx.min.js").read_bytes()).hexdigest()}
    assert "htmx.org@2.0.11" in readme
    assert "Zero-Clause BSD" in (STATIC_DIR / "htmx" / "LICENSE").read_text()
    for name, (path, _) in ASSETS.items():
        assert path.is_file(), name
        assert path.is_relative_to(STATIC_DIR), name


def hostile_case() -> contract.CaseView:
    message = contract.TranscriptEntry(
        direction="inbound",
        message_id="m1",
        from_="vendor@sim.example",
        to=["caseflow@sim.example"],
        subject=HOSTILE,
        text=HOSTILE,
        at=1_700_000_000_000,
    )
    return contract.CaseView(
        case_id="case-1",
        status="RUNNING",
        created_at=1,
        updated_at=2,
        next_action_at=NOTHING_SCHEDULED,
        attempt_count=1,
        max_attempts=3,
        follow_up_delay_hours=72,
        channel="EMAIL",
        counterparty=contract.Counterparty(address="vendor@sim.example", name=HOSTILE),
        attachments=[],
        goal=contract.Goal(objective=HOSTILE),
        sender_persona=contract.SenderPersona(name="Avery"),
        input_request=None,
        result={"note": HOSTILE},
        conversation_messages=[message],
    )


def test_counterparty_text_is_rendered_as_text() -> None:
    html = render_case(hostile_case(), messages=hostile_case().conversation_messages)
    assert "<script>" not in html
    assert 'href="javascript:' not in html
    assert html.count("&lt;script&gt;window.pwned = 1&lt;/script&gt;") >= 4  # subject, text, name, objective


def test_times_are_shown_in_utc_and_nothing_scheduled_as_a_dash() -> None:
    assert utc_time(0) == "1970-01-01 00:00:00 UTC"
    assert utc_time(NOTHING_SCHEDULED) == "—"
    assert utc_time(None) == "—"


def render_case(
    view: contract.CaseView,
    deliveries: list[webhook.WebhookDelivery] | None = None,
    *,
    messages: object = (),
) -> str:
    return (
        environment()
        .get_template("case_live.html")
        .render(
            case=view,
            messages=messages,
            attachments_by_message={},
            deliveries=deliveries or [],
            terminal=False,
            case_url="/console/cases/case-1",
            version="v",
            live_url="/l",
            poll_seconds=2,
            csrf="t",
            never=NOTHING_SCHEDULED,
        )
    )


def test_the_case_page_shows_the_status_timeline_oldest_first_with_what_it_leaves_out() -> None:
    history = [
        contract.StatusChange(status="CREATED", at=0, cause="created"),
        contract.StatusChange(status="INPUT_NEEDED", at=60_000, cause="reply_judged"),
        contract.StatusChange(status="RUNNING", at=120_000, cause="input_judged"),
    ]
    view = msgspec.structs.replace(hostile_case(), status_history=history, status_history_omitted=7)
    html = render_case(view)
    timeline = html[html.index('id="status-timeline"') : html.index("</ol>")]
    assert re.findall(r'data-status="([A-Z_]+)"', timeline) == ["CREATED", "INPUT_NEEDED", "RUNNING"]
    assert '1970-01-01 00:01:00 UTC · <span class="cause">reply judged</span>' in timeline
    # The omitted count sits right after the first entry, where the gap is.
    assert timeline.index("7 earlier change(s) not shown") < timeline.index('data-status="INPUT_NEEDED"')


@pytest.mark.parametrize(("made", "listed", "note"), [(2, 2, False), (60, 50, True)])
def test_a_delivery_says_when_it_lists_only_its_newest_attempts(made: int, listed: int, note: bool) -> None:
    attempt = webhook.DeliveryAttempt(at=0, status=500, latency_ms=3, error="HTTP 500: boom")
    delivery = webhook.WebhookDelivery(
        event_id="evt_1",
        event_type="case.failed",
        timestamp=0,
        state="pending",
        next_attempt_at=None,
        attempts=[attempt] * listed,
        attempt_count=made,
        data=contract.CaseEventData(
            case_id="case-1", status="FAILED", channel="EMAIL", attempt_count=1, attachments=[]
        ),
    )
    html = render_case(hostile_case(), [delivery])
    assert html.count("<td>HTTP 500: boom</td>") == listed
    assert f"{made} attempt(s)" in html
    assert ("(the newest 50 listed)" in html) is note
