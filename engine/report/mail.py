"""E-mail of the report, as the reference suite sends it: HTML, with the subject
'<prefix> Long-Running Stress Test Summary: <date>' (a long run's prefix is "Long"). The password
comes only from the environment variable `[report.email] password_env` names, never the config."""

from __future__ import annotations

import datetime
import os
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

SUBJECT = "Long-Running Stress Test Summary"
TIMEOUT_S = 30.0


class MailError(RuntimeError):
    """The report could not be sent; the message says why (the run's verdict does not change)."""


def subject_line(prefix: str, day: datetime.date | None = None) -> str:
    day = day or datetime.date.today()
    return " ".join(part for part in (prefix.strip(), f"{SUBJECT}: {day.isoformat()}") if part)


def build_message(email: Any, summary_text: str, page_html: str, day: datetime.date | None = None) -> EmailMessage:
    """`email`: the config's [report.email] section."""
    message = EmailMessage()
    message["Subject"] = subject_line(email.subject_prefix, day)
    message["From"] = email.sender
    message["To"] = ", ".join(email.recipients)
    message.set_content(summary_text)  # for mail readers without HTML
    message.add_alternative(page_html, subtype="html")
    return message


def send_report(email: Any, summary_text: str, page_html: str) -> str:
    """Send it; returns a line for the log. Raises MailError with the reason."""
    if not email.recipients or not email.sender:
        raise MailError("[report.email] needs sender and recipients")
    password = ""
    if email.username:
        password = os.environ.get(email.password_env, "") if email.password_env else ""
        if not password:
            raise MailError(f"[report.email] username is set but the environment variable "
                            f"{email.password_env or '(password_env unset)'} holds no password")
    message = build_message(email, summary_text, page_html)
    try:
        with smtplib.SMTP(email.smtp_host, email.smtp_port, timeout=TIMEOUT_S) as smtp:
            if email.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if email.username:
                smtp.login(email.username, password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"sending the report to {email.smtp_host}:{email.smtp_port} failed: {exc}") from exc
    return f"e-mailed '{message['Subject']}' to {', '.join(email.recipients)} via {email.smtp_host}:{email.smtp_port}"
