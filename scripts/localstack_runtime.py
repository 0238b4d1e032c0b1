"""LocalStack's runtime (``python -m localstack.runtime.main``), without SQS's per-request metrics.

Run by ``scripts/localstack.sh start`` with the runtime's own interpreter.

LocalStack's SQS publishes two kinds of CloudWatch metrics.  Every few seconds
(``SQS_CLOUDWATCH_METRICS_REPORT_INTERVAL``) it publishes each queue's depth
(``ApproximateNumberOfMessagesVisible``, ...), which the project's alarms
watch; that is kept.  And for every SendMessage, ReceiveMessage and
DeleteMessage call it publishes ``NumberOfMessagesSent``, ``SentMessageSize``,
``NumberOfMessagesReceived``/``NumberOfEmptyReceives`` and
``NumberOfMessagesDeleted``, each one an internal ``PutMetricData`` request
through the emulator's own gateway: two or three requests for each SQS request.
Nothing in the project reads those, and under load they cost the emulator most
of its CPU: a 3,000-message load test on 2 cores (``fmn loadtest --messages
3000 --concurrency 2 --email-processes 2``) took 62 % of a core for the emulator
with them and 12 % without, and drained in 81 s against 57 s.
(``SQS_DISABLE_CLOUDWATCH_METRICS=1`` stops the depth metrics too.)  On AWS
they cost nobody's CPU.  So this turns off the per-request ones alone,
by shutting their dispatcher down as soon as the SQS provider creates it: its
``dispatch_sqs_metric`` returns at once when it is not running.

``FMN_LOCALSTACK_SQS_REQUEST_METRICS=1`` leaves them on.  The names patched are
those of the LocalStack version ``scripts/localstack.sh`` pins; if they change,
this refuses to start rather than silently measure something else.
"""

from __future__ import annotations

import os
import sys


def _without_request_metrics() -> None:
    from localstack.services.sqs import provider

    init = getattr(provider.SqsProvider, "_init_cloudwatch_metrics_reporting", None)
    if init is None or not hasattr(provider.CloudwatchDispatcher, "shutdown"):
        sys.exit("localstack_runtime: this LocalStack's SQS provider has no "
                 "_init_cloudwatch_metrics_reporting or CloudwatchDispatcher.shutdown; "
                 "update scripts/localstack_runtime.py for it "
                 "(or set FMN_LOCALSTACK_SQS_REQUEST_METRICS=1)")

    def init_without_request_metrics(self: provider.SqsProvider) -> None:
        init(self)
        dispatcher = getattr(self, "_cloudwatch_dispatcher", None)
        if dispatcher is not None:
            dispatcher.shutdown()

    provider.SqsProvider._init_cloudwatch_metrics_reporting = init_without_request_metrics


def main() -> None:
    if os.environ.get("FMN_LOCALSTACK_SQS_REQUEST_METRICS") != "1":
        _without_request_metrics()
    from localstack.runtime.main import main as localstack_main

    localstack_main()


if __name__ == "__main__":
    main()
