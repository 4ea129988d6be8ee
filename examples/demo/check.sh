#!/bin/sh
# Run by `freeport-compose run` with the leased ports in FREEPORT_* variables.
set -eu
for name in web api; do
    eval port=\$FREEPORT_$name
    body=$(python3 -c "import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())" "http://127.0.0.1:$port/")
    echo "$name answers on leased port $port (project $COMPOSE_PROJECT_NAME): $body"
done
