"""The SES mailer against the moto server: sent, refused for good, or not sent for sure."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

import boto3
import pytest
from botocore.config import Config

from fmn.delivery.mailers import SesMailer
from fmn.errors import NotSent, PermanentError, RetryableError
from fmn.local.stack import free_port

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


def test_ses_sends_from_a_sender_with_a_display_name(aws_env: str) -> None:
    # the envelope sender (Source) is the address; From keeps the name, non-ASCII too
    ses = boto3.client("ses", region_name="us-east-1")
    address = f"fmn-{uuid.uuid4().hex[:8]}@example.org"
    ses.verify_email_identity(EmailAddress=address)
    sender = f"Fédora Notifications <{address}>"
    seen: list[str] = []
    ses.meta.events.register("provide-client-params.ses.SendRawEmail",
                             lambda params, **_: seen.append(params["Source"]))
    SesMailer(ses, sender).send(mail("a@example.org", sender))
    assert seen == [address]


def test_ses_that_cannot_be_reached_is_retried_without_a_claim_it_sent_nothing() -> None:
    # botocore raises the last attempt's error: a connection refused on a retry says
    # nothing of an earlier attempt whose answer was lost, so it is no NotSent
    ses = boto3.client("ses", region_name="us-east-1",
                       endpoint_url=f"http://127.0.0.1:{free_port()}",
                       aws_access_key_id="x", aws_secret_access_key="x",
                       config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(RetryableError) as failed:
        SesMailer(ses, "fmn@example.org").send(mail("a@example.org", "fmn@example.org"))
    assert not isinstance(failed.value, NotSent)


@pytest.mark.parametrize(("retried", "certain"), [(0, True), (2, False)])
def test_an_ses_refusal_after_retries_may_have_been_sent(retried: int, certain: bool) -> None:
    """botocore retries a lost answer: a Throttling on the third attempt says nothing of
    the first, which may have gone through (a NotSent would give a verification's counts
    back for a mail that went)."""
    from botocore.exceptions import ClientError

    class Throttled:
        def send_raw_email(self, **kwargs: object) -> None:
            raise ClientError({"Error": {"Code": "Throttling", "Message": "slow down"},
                               "ResponseMetadata": {"RetryAttempts": retried}},
                              "SendRawEmail")

    with pytest.raises(RetryableError) as failed:
        SesMailer(Throttled(), "fmn@example.org").send(mail("a@example.org", "fmn@example.org"))
    assert isinstance(failed.value, NotSent) is certain
