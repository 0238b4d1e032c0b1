"""Both stacks of one stage, for the CDK app and the tests."""

from __future__ import annotations

import aws_cdk as cdk

from fmn_infra.compute import ComputeStack
from fmn_infra.messaging import MessagingStack


def synthesizer() -> cdk.DefaultStackSynthesizer:
    """No bootstrap-version rule: it reads SSM, which a local target need not run."""
    return cdk.DefaultStackSynthesizer(generate_bootstrap_version_rule=False)


def build(app: cdk.App, stage: str = "dev", *, lean_packages: bool = False,
          messaging_only: bool = False) -> dict[str, cdk.Stack]:
    """The stage's two stacks; ``lean_packages``: code zips without dependencies (tests);
    ``messaging_only``: the messaging stack alone (seconds: nothing is packaged), the
    part ``fmn up`` deploys to LocalStack."""
    prefix = f"fmn-{stage}-"
    messaging = MessagingStack(app, f"fmn-{stage}-messaging", prefix=prefix,
                               synthesizer=synthesizer(),
                               description="FMN queues, dead-letter queues, claim bucket, "
                                           "alarms, alarm topic and dashboard")
    if messaging_only:
        return {"messaging": messaging}
    compute = ComputeStack(app, f"fmn-{stage}-compute", prefix=prefix,
                           lean_packages=lean_packages, synthesizer=synthesizer(),
                           description="FMN functions, web app, feed endpoint, ElastiCache, "
                                       "PostgreSQL, SES and secrets")
    # named, not referenced: the compute stack finds queues, bucket and topic by name
    compute.add_dependency(messaging)
    return {"messaging": messaging, "compute": compute}
