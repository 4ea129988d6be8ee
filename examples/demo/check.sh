#!/bin/sh
# Run by `freeport-compose run` with the leased ports in FREEPORT_* variables.
set -eu
for name in web api; do
    eval port=\$FREEPORT_$name
    # busybox httpd answers 404 for a directory without index.html: any HTTP status proves it is up.
    status=$(python3 -c "import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)" "http://127.0.0.1:$port/")
    echo "$name answers HTTP $status on leased port $port (project $COMPOSE_PROJECT_NAME)"
done
