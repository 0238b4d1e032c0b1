#!/bin/bash
# The feed endpoint under the AWS Lambda Web Adapter (the layer's /opt/bootstrap
# runs this as the function's handler, "stream/run.sh").  uvicorn serves
# stream.py's ASGI app on $PORT; the adapter turns each function URL request
# into an HTTP request to it and streams the response back
# (AWS_LWA_INVOKE_MODE=response_stream).  No access log: feed URLs carry a token.
# Locally the same command runs it: PORT=8080 functions/sse/stream/run.sh
set -euo pipefail
ROOT="${LAMBDA_TASK_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}"
export PYTHONPATH="$ROOT:$ROOT/vendor${PYTHONPATH:+:$PYTHONPATH}"
exec python -m uvicorn stream:app --app-dir "$ROOT" --host 127.0.0.1 --port "${PORT:-8080}" \
    --no-access-log --timeout-graceful-shutdown 2
