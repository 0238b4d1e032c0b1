"""FMN's deployment as code (AWS CDK): two stacks split by lifecycle.

- :mod:`fmn_infra.messaging`: queues and dead-letter queues, the claim
  bucket, the alarms, their SNS topic and a dashboard.  Nothing in it runs
  code, so LocalStack deploys the very same template.
- :mod:`fmn_infra.compute`: the functions (packaged by Chalice's CDK
  construct), their roles, event source mappings and schedules, the web app,
  ElastiCache, PostgreSQL, SES, secrets.

Every queue, dead-letter queue, receive count, visibility timeout,
concurrency and alarm comes from :mod:`fmn.pipeline.queues` and
:mod:`fmn.pipeline.alarms`; ``infra/app.py`` is the CDK app (``make synth``).
"""
