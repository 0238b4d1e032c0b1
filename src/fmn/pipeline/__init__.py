"""The serverless pipeline's wire formats and queue layout.

bus -> bridge -> incoming SQS queue (:mod:`fmn.pipeline.envelope`) -> match
function -> one SQS queue per backend -> senders.  The queue definitions
(:mod:`fmn.pipeline.queues`) are the single source that ``infra/`` deploys
and the local Lambda runner reads.
"""
