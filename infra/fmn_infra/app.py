"""Both stacks of one stage, for the CDK app and the tests."""

from __future__ import annotations

import aws_cdk as cdk

from fmn_infra.messaging import MessagingStack


def synthesizer() -> cdk.DefaultStackSynthesizer:
    """No bootstrap-version rule: it reads SSM, which a local target need not run."""
    return cdk.DefaultStackSynthesizer(generate_bootstrap_version_rule=False)


def build(app: cdk.App, stage: str = "dev") -> dict[str, cdk.Stack]:
    prefix = f"fmn-{stage}-"
    messaging = MessagingStack(app, f"fmn-{stage}-messaging", prefix=prefix,
                               synthesizer=synthesizer(),
                               description="FMN queues, dead-letter queues, claim bucket, "
                                           "alarms, alarm topic and dashboard")
    return {"messaging": messaging}
