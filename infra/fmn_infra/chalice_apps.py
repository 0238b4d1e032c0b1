"""Chalice apps through Chalice's own CDK construct, and what Chalice cannot say, added on top.

:class:`ChaliceApp` wraps :class:`chalice.cdk.Chalice` for one app folder
(``functions/<name>/`` or ``webapp/``): Chalice packages it (``chalice
package``: the SAM template and the deployment zip) and the construct
includes that template.  Then, from :mod:`fmn.pipeline.queues`, each SQS
event source gets ``FunctionResponseTypes: [ReportBatchItemFailures]`` and
the queue's maximum concurrency (``ScalingConfig``), or, for a queue of
concurrency 1 (the IRC sender's single connection), the function's reserved
concurrency 1; every function gets a deployed name (``fmn-prod-match``: the
alarms find it by name) and the role the stack made for it.

Two facts of Chalice 1.34 shape this: the CLI factory imports each app as
the module ``app`` (so the previous app's module is dropped first, and the
queue prefix the app reads at import is set in the environment), and its
IAM policy analyzer fails on this code, so policies are never generated:
each app runs with the least-privilege role given to it.

``lean=True`` packages the app without its requirements (only ``app.py``
and ``vendor/``): the template is the same, the zip is not deployable.
Tests use it (a full package downloads every Linux wheel: minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalice import api
from chalice.cdk import Chalice
from constructs import Construct

from fmn.pipeline.queues import QUEUES, QueueDef


@dataclass(frozen=True)
class FunctionInfo:
    """One function of a packaged app, as the SAM template names it."""

    #: the SAM resource (``HandleIncoming``) and the logical function name (``match``)
    resource: str
    name: str
    timeout_s: int
    #: the queue feeding it, if any
    queue: QueueDef | None
    has_schedule: bool


class ChaliceApp(Chalice):
    """One Chalice app folder, packaged by Chalice, adjusted from the queue definitions."""

    def __init__(self, scope: Construct, construct_id: str, *, source_dir: Path, prefix: str,
                 stage_config: dict[str, Any], lean: bool = False) -> None:
        self._lean = lean
        self._prefix = prefix
        self.app_name = source_dir.name
        super().__init__(scope, construct_id, source_dir=str(source_dir),
                         stage_config=stage_config)
        with open(os.path.join(self._sam_package_dir, "sam.json")) as f:
            self.sam: dict[str, Any] = json.load(f)
        self.functions = [self._adjust(resource, props["Properties"])
                          for resource, props in sorted(self.sam["Resources"].items())
                          if props["Type"] == "AWS::Serverless::Function"]

    def _package_app(self) -> None:
        """Package with the queue prefix the app reads at import, as module ``app`` afresh."""
        # Chalice puts the app's variables into os.environ before importing it
        saved = dict(os.environ)
        os.environ["FMN_QUEUE_PREFIX"] = self._prefix
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        sys.modules.pop("app", None)
        project = self.source_dir
        tmp = None
        try:
            if self._lean:
                tmp = tempfile.mkdtemp(prefix="fmn-chalice-")
                project = os.path.join(tmp, os.path.basename(self.source_dir))
                shutil.copytree(self.source_dir, project,
                                ignore=shutil.ignore_patterns("requirements.txt", "deployments",
                                                              "__pycache__", "static"))
            api.package_app(project_dir=project, output_dir=self._sam_package_dir,
                            stage=self.stage_name, chalice_config=self.stage_config)
        finally:
            sys.modules.pop("app", None)
            if project in sys.path:
                sys.path.remove(project)
            os.environ.clear()
            os.environ.update(saved)
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    def _adjust(self, resource: str, props: dict[str, Any]) -> FunctionInfo:
        cfn = self.get_resource(resource)
        events = props.get("Events", {})
        fed_by: QueueDef | None = None
        for event_name, event in events.items():
            if event["Type"] != "SQS":
                continue
            fed_by = _queue_of(event["Properties"]["Queue"], self._prefix)
            path = f"Properties.Events.{event_name}.Properties"
            cfn.add_override(f"{path}.FunctionResponseTypes", ["ReportBatchItemFailures"])
            cfn.add_override(f"{path}.BatchSize", fed_by.batch_size)
            cfn.add_override(f"{path}.MaximumBatchingWindowInSeconds", fed_by.batching_window_s)
            if fed_by.max_concurrency >= 2:
                cfn.add_override(f"{path}.ScalingConfig.MaximumConcurrency",
                                 fed_by.max_concurrency)
            else:
                # an event source mapping's maximum concurrency cannot go below 2:
                # the function's reserved concurrency holds it to one
                cfn.add_override(f"{path}.ScalingConfig", None)
                cfn.add_override("Properties.ReservedConcurrentExecutions",
                                 fed_by.max_concurrency)
        if fed_by is not None and fed_by.function:
            name = fed_by.function
        elif self.app_name == "webapp" or len(self.sam["Resources"]) == 1:
            name = self.app_name
        else:
            name = f"{self.app_name}-{props['Handler'].rsplit('.', 1)[-1]}"
        cfn.add_override("Properties.FunctionName", f"{self._prefix}{name}")
        return FunctionInfo(resource=resource, name=name, timeout_s=int(props["Timeout"]),
                            queue=fed_by,
                            has_schedule=any(e["Type"] == "Schedule" for e in events.values()))


def _queue_of(arn: Any, prefix: str) -> QueueDef:
    """The queue definition an event source's ARN (``Fn::Sub`` ``...:fmn-prod-irc``) names."""
    text = arn["Fn::Sub"] if isinstance(arn, dict) else str(arn)
    name = text.rsplit(":", 1)[-1]
    for q in QUEUES:
        if q.sqs_name(prefix) == name:
            return q
    raise ValueError(f"an event source reads {name!r}, which is no queue of queues.py "
                     f"under the prefix {prefix!r}")
