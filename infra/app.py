"""The CDK app: ``make synth`` writes both stacks' templates to ``infra/cdk.out/``.

Context ``stage`` (``cdk synth -c stage=prod``, or ``FMN_STAGE``; default ``dev``)
names the stacks (``fmn-dev-messaging``, ``fmn-dev-compute``) and gives the
queue prefix ``fmn-<stage>-``.  No AWS account is needed to synthesize.
``FMN_LEAN_PACKAGES=1`` packages the functions without their dependencies
(fast, for looking at templates; not deployable).  ``FMN_SYNTH_ONLY=messaging``
writes the messaging stack alone, in seconds (``make synth-messaging``, which
``make run`` uses so that ``fmn up`` deploys it to LocalStack).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the CDK library runs on the machine's Node.js; its end-of-life banner is noise here
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
sys.path.insert(0, str(HERE))

import aws_cdk as cdk  # noqa: E402
from fmn_infra.app import build  # noqa: E402

if __name__ == "__main__":
    # the cdk command sets CDK_OUTDIR; run directly (make synth), write beside this file
    app = cdk.App(outdir=os.environ.get("CDK_OUTDIR", str(HERE / "cdk.out")))
    build(app, stage=app.node.try_get_context("stage") or os.environ.get("FMN_STAGE") or "dev",
          lean_packages=os.environ.get("FMN_LEAN_PACKAGES") == "1",
          messaging_only=os.environ.get("FMN_SYNTH_ONLY") == "messaging")
    app.synth()
