"""The report by e-mail, received by a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import datetime
import email
import email.policy
import socket

import pytest
from aiosmtpd.controller import Controller

from engine.config._sections import EmailSection
from engine.report.mail import MailError, send_report, subject_line


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's interface
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def inbox():
    box = _Inbox()
    controller = Controller(box, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


def test_the_report_arrives_as_html_with_the_suites_subject(inbox) -> None:
    box, port = inbox
    section = EmailSection(smtp_host="127.0.0.1", smtp_port=port, starttls=False, sender="engine@example.org",
                           recipients=("a@example.org", "b@example.org"), subject_prefix="Long")
    line = send_report(section, "TOTAL | 0 | 10 | 100 |\nverdict: PASS\n",
                       "<html><body><h1>Run x PASS</h1></body></html>")
    [(sender, recipients, content)] = box.messages
    assert sender == "engine@example.org" and recipients == ["a@example.org", "b@example.org"]
    message = email.message_from_bytes(content, policy=email.policy.default)
    today = datetime.date.today().isoformat()
    assert message["Subject"] == f"Long Long-Running Stress Test Summary: {today}" and "a@example.org" in line
    assert "<h1>Run x PASS</h1>" in message.get_body(("html",)).get_content()
    assert "verdict: PASS" in message.get_body(("plain",)).get_content()


def test_a_login_without_its_password_in_the_environment_is_refused_before_connecting(monkeypatch) -> None:
    monkeypatch.delenv("ENGINE_TEST_SMTP_PASSWORD", raising=False)
    section = EmailSection(smtp_host="127.0.0.1", smtp_port=9, sender="e@x", recipients=("a@x",), username="me",
                           password_env="ENGINE_TEST_SMTP_PASSWORD")
    with pytest.raises(MailError, match="ENGINE_TEST_SMTP_PASSWORD"):
        send_report(section, "", "")


def test_an_unreachable_server_is_a_reason_not_a_crash() -> None:
    section = EmailSection(smtp_host="127.0.0.1", smtp_port=_free_port(), starttls=False, sender="e@x",
                           recipients=("a@x",))
    with pytest.raises(MailError, match="failed"):
        send_report(section, "", "")


def test_subject_without_prefix() -> None:
    assert subject_line("", datetime.date(2026, 11, 25)) == "Long-Running Stress Test Summary: 2026-11-25"
