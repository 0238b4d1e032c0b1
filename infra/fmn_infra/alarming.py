"""Alarm definitions (fmn.pipeline.alarms) as template resources, thresholds as parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aws_cdk as cdk
from constructs import Construct

from fmn.pipeline import alarms


class AlarmFactory:
    """Adds ``AWS::CloudWatch::Alarm`` resources to a stack; one parameter per threshold used."""

    def __init__(self, stack: cdk.Stack, thresholds: alarms.Thresholds | None = None) -> None:
        self.stack = stack
        self.thresholds = thresholds or alarms.Thresholds()
        self.params: dict[str, cdk.CfnParameter] = {}
        self.alarms: dict[str, cdk.CfnResource] = {}

    def value(self, v: alarms.Param | int) -> Any:
        """A threshold: its parameter's reference (made on first use), or the constant."""
        if not isinstance(v, alarms.Param):
            return v
        if v.key not in self.params:
            self.params[v.key] = cdk.CfnParameter(
                self.stack, v.cfn_name, type="Number", default=v.value(self.thresholds),
                min_value=v.minimum, description=v.doc)
        return self.params[v.key].value_as_number

    def add(self, definition: alarms.AlarmDef, actions: Sequence[str],
            scope: Construct | None = None) -> cdk.CfnResource:
        """One alarm: its properties are PutMetricAlarm's arguments, thresholds parameters."""
        alarm = cdk.CfnResource(scope or self.stack, definition.logical_id,
                                type="AWS::CloudWatch::Alarm",
                                properties=definition.properties(self.value, actions))
        self.alarms[definition.name] = alarm
        return alarm
