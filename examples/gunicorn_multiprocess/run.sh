#!/bin/sh
# Serve examples/flask_app.py with gunicorn and several workers; run from the repository root.
#   sh examples/gunicorn_multiprocess/run.sh          # PORT (8000), WEB_CONCURRENCY (4)
# then: for i in $(seq 20); do curl -s "localhost:8000/ask?q=$i" >/dev/null; done
#       curl -s localhost:8000/metrics | grep '^http_requests_total'
set -eu
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" -m gunicorn -c examples/gunicorn_multiprocess/gunicorn.conf.py \
    examples.flask_app:app
