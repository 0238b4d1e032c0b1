"""The SES mailer against the moto server: sent, refused for good, or certainly not sent."""

from __future__ import annotations

import socket
import uuid
from email.message import EmailMessage

import boto3
import pytest
from botocore.config import Config

from fmn.delivery.mailers import SesMailer
from fmn.errors import NotSent, PermanentError

pytestmark = pytest.mark.integration


def mail(to: str, sender: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "hello"
    msg.set_content("body\n")
    return msg


def test_ses_sends_from_a_verified_sender_and_refuses_an_unverified_one(aws_env: str) -> None:
    ses = boto3.client("ses", region_name="us-east-1")
    sender = f"fmn-{uuid.uuid4().hex[:8]}@example.org"
    with pytest.raises(PermanentError):  # not verified: this mail, never
        SesMailer(ses, sender).send(mail("a@example.org", sender))
    ses.verify_email_identity(EmailAddress=sender)
    before = ses.get_send_quota()["SentLast24Hours"]
    SesMailer(ses, sender).send(mail("a@example.org", sender))
    assert ses.get_send_quota()["SentLast24Hours"] > before


def test_ses_that_cannot_be_reached_sent_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ses = boto3.client("ses", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
                       aws_access_key_id="x", aws_secret_access_key="x",
                       config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(NotSent):
        SesMailer(ses, "fmn@example.org").send(mail("a@example.org", "fmn@example.org"))
