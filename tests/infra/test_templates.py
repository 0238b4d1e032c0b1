"""The synthesized templates say what matters (``aws_cdk.assertions``), and cfn-lint accepts them.

Every SQS event source reports batch item failures and has its queue's
maximum concurrency (or, at concurrency 1, the function's reserved
concurrency); every queue of ``queues.py`` has its DLQ, receive count,
visibility timeout and alarms; no role has ``*`` on a resource; no secret is
a plain environment variable; the cache never evicts and lets only the
functions in.  Code zips are lean here (the template is the same).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fmn.pipeline import alarms
from fmn.pipeline.queues import DLQ_RETENTION_S, QUEUES, idempotency_window_s
from fmn.settings import Settings

pytestmark = pytest.mark.infra

PREFIX = "fmn-test-"


def resources(template: Any, kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = template.find_resources(kind)
    return found


def functions(templates: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in
            resources(templates["compute"], "AWS::Serverless::Function").items()}


def test_every_sqs_event_source_reports_failures_with_its_concurrency(
        templates: dict[str, Any]) -> None:
    fed: set[str] = set()
    for name, props in functions(templates).items():
        for event in (props.get("Events") or {}).values():
            if event["Type"] != "SQS":
                continue
            source = event["Properties"]
            q = next(q for q in QUEUES
                     if source["Queue"]["Fn::Sub"].endswith(f":{q.sqs_name(PREFIX)}"))
            fed.add(q.name)
            assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
            assert source["BatchSize"] == q.batch_size
            if q.max_concurrency >= 2:
                assert source["ScalingConfig"]["MaximumConcurrency"] == q.max_concurrency, name
            else:  # the IRC sender: one connection
                assert "ScalingConfig" not in source
                assert props["ReservedConcurrentExecutions"] == q.max_concurrency, name
            assert props["FunctionName"] == f"{PREFIX}{q.function}"
            # a received message stays invisible longer than the function may run
            assert props["Timeout"] < q.visibility_timeout_s, name
    assert fed == {q.name for q in QUEUES if q.function}


def test_every_queue_has_its_dlq_and_alarms(templates: dict[str, Any]) -> None:
    messaging = templates["messaging"].to_json()
    queues = {json.dumps(r["Properties"]["QueueName"]): r["Properties"]
              for r in messaging["Resources"].values() if r["Type"] == "AWS::SQS::Queue"}
    by_suffix = {re.sub(r'.*"([a-z_-]+)"\]\]\}$', r"\1", k): v for k, v in queues.items()}
    alarm_names = [json.dumps(r["Properties"]["AlarmName"]) for r in messaging["Resources"]
                   .values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    for q in QUEUES:
        props, dlq = by_suffix[q.name], by_suffix[f"{q.name}-dlq"]
        assert props["VisibilityTimeout"] == q.visibility_timeout_s
        assert props["RedrivePolicy"]["maxReceiveCount"] == q.max_receive_count
        assert dlq["MessageRetentionPeriod"] > props["MessageRetentionPeriod"]
        # what the send-once window is made of is what is deployed
        assert dlq["MessageRetentionPeriod"] == DLQ_RETENTION_S
        assert props["MessageRetentionPeriod"] == q.retention_s
        assert Settings().idempotency_ttl_s == idempotency_window_s() >= \
            DLQ_RETENTION_S + 2 * q.retention_s
        for check in (f'"{q.name}-age"', f'"{q.name}-depth"', f'"{q.name}-dlq"'):
            assert any(n.endswith(check + "]]}") for n in alarm_names), (q.name, check)
    assert len(alarm_names) == len(alarms.messaging_alarms(PREFIX))


def test_every_function_has_its_alarms(templates: dict[str, Any]) -> None:
    names = {r["Properties"]["AlarmName"] for r in
             resources(templates["compute"], "AWS::CloudWatch::Alarm").values()}
    for props in functions(templates).values():
        fn = props["FunctionName"]
        assert {f"{fn}-errors", f"{fn}-throttles", f"{fn}-duration"} <= names


def test_no_role_has_a_wildcard(templates: dict[str, Any]) -> None:
    for name, policy in resources(templates["compute"], "AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            res = statement["Resource"]
            for r in res if isinstance(res, list) else [res]:
                assert r != "*", (name, statement)
                assert "*" not in json.dumps(r) or "claims/*" in json.dumps(r), (name, statement)
            acts = statement["Action"]
            assert all("*" not in a for a in (acts if isinstance(acts, list) else [acts]))


SECRET_NAME = re.compile(r"SECRET(?!S$)|PASSWORD|TOKEN|DATABASE_URL|_KEY$")


def test_no_secret_in_plain_environment_variables(templates: dict[str, Any]) -> None:
    envs = [p.get("Environment", {}).get("Variables", {}) for p in functions(templates).values()]
    envs += [r["Properties"]["Environment"]["Variables"] for r in
             resources(templates["compute"], "AWS::Lambda::Function").values()]
    for env in envs:
        for name, value in env.items():
            assert not SECRET_NAME.search(name), name
            assert "resolve:secretsmanager" not in json.dumps(value), name
            if name.endswith("_URL") and isinstance(value, str):
                assert not re.search(r"//[^/@]*:[^/@]*@", value), (name, "a password in a URL")
        if "FMN_SECRETS" in env:
            assert "Fn::Join" in env["FMN_SECRETS"] or "Ref" in env["FMN_SECRETS"]


def test_cache_never_evicts_and_lets_only_functions_in(templates: dict[str, Any]) -> None:
    compute = templates["compute"]
    compute.has_resource_properties("AWS::ElastiCache::ParameterGroup",
                                    {"Properties": {"maxmemory-policy": "noeviction"}})
    compute.has_resource_properties("AWS::ElastiCache::ReplicationGroup",
                                    {"TransitEncryptionEnabled": True})
    for rule in resources(compute, "AWS::EC2::SecurityGroupIngress").values():
        assert "SourceSecurityGroupId" in rule["Properties"]
        assert "CidrIp" not in rule["Properties"]


def test_feed_endpoint_streams(templates: dict[str, Any]) -> None:
    templates["compute"].has_resource_properties("AWS::Lambda::Url",
                                                 {"InvokeMode": "RESPONSE_STREAM"})
    # production, as the web app: the development signing key is refused at start
    from aws_cdk.assertions import Match

    templates["compute"].has_resource_properties("AWS::Lambda::Function", {
        "Handler": "stream/run.sh",
        "Environment": {"Variables": Match.object_like({"FMN_ENV": "production"})}})


def test_cfn_lint_accepts_the_templates(template_files: dict[str, Path]) -> None:
    # W3005: the CDK writes DependsOn beside a GetAtt that already orders them
    run = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), "--ignore-checks", "W3005",
                          "--", *map(str, template_files.values())],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_gateway_answers_errors_in_the_api_format(templates: dict[str, Any]) -> None:
    # API Gateway's own answers (no route, throttled, the function failing) carry
    # {"error", "detail", "field"}, as the app's own errors do (docs/web-api.md)
    apis = resources(templates["compute"], "AWS::Serverless::Api")
    assert len(apis) == 1
    (api,) = apis.values()
    answers = api["Properties"]["DefinitionBody"]["x-amazon-apigateway-gateway-responses"]
    assert {"DEFAULT_4XX", "DEFAULT_5XX", "MISSING_AUTHENTICATION_TOKEN", "THROTTLED",
            "REQUEST_TOO_LARGE", "INTEGRATION_TIMEOUT"} <= set(answers)
    assert answers["MISSING_AUTHENTICATION_TOKEN"]["statusCode"] == "404"
    no_route = json.loads(answers["MISSING_AUTHENTICATION_TOKEN"]["responseTemplates"]
                          ["application/json"])
    assert no_route == {"error": "not-found", "detail": "no such path or method", "field": None}
    for kind, answer in answers.items():
        template = answer["responseTemplates"]["application/json"]
        # the message as API Gateway quotes it, a valid JSON string
        body = json.loads(template.replace("$context.error.messageString", '"a message"'))
        assert set(body) == {"error", "detail", "field"}, kind
        headers = answer["responseParameters"]
        assert headers["gatewayresponse.header.Content-Type"] == "'application/json'"
        assert headers["gatewayresponse.header.X-Content-Type-Options"] == "'nosniff'"
    assert answers["THROTTLED"]["responseParameters"][
        "gatewayresponse.header.Retry-After"] == "'1'"
