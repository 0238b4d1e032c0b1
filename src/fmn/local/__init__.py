"""Local stand-ins for the parts AWS runs: the queues and the Lambda runtime.

In AWS, SQS holds the pipeline's queues and Lambda's SQS event source mapping
polls them and invokes the functions.  Locally an emulator (the moto server,
LocalStack) answers the AWS APIs but runs no Lambda code, so this package
creates the queues from :mod:`fmn.pipeline.queues` through the ordinary AWS
APIs (:mod:`fmn.local.aws`) and runs the functions' handlers in-process under
a runner that behaves like the event source mapping
(:mod:`fmn.local.runner`).  Nothing here is deployed.
"""
