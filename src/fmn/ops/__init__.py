"""What an operator runs against a deployment (AWS, LocalStack or the moto server).

:mod:`fmn.ops.dlq` lists, shows and redrives the dead-letter queues of
:mod:`fmn.pipeline.queues` without losing a message; :mod:`fmn.ops.alarms`
reads (and, on emulators, creates) the CloudWatch alarms;
:mod:`fmn.ops.doctor` checks that every part answers and agrees, one line per
check.  The ``fmn dlq`` and ``fmn doctor`` commands are thin layers over
these; each function takes its boto3 clients and settings explicitly.
"""
