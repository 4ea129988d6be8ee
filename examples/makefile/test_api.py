"""A stand-in integration test: the API answers HTTP on the URL given."""

import sys
import urllib.error
import urllib.request

url = sys.argv[1]
try:
    status = urllib.request.urlopen(url, timeout=10).status
except urllib.error.HTTPError as e:  # busybox httpd: 404 for a directory, still a live server
    status = e.code
print(f"{url} -> HTTP {status}")
sys.exit(0 if status in (200, 403, 404) else 1)
