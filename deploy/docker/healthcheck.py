"""Docker HEALTHCHECK for granite-speech-server: exit 0 when GET /health answers 200.

/health is liveness (the process serves HTTP), not readiness: a container that is
still downloading or loading the model is healthy, just not ready (GET /ready).
Standard library only, so it runs in any image the server runs in. It reads the
port and, for ``--auth-all-endpoints``, the first API key from the server's own
environment variables.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


def health_url(environ: os._Environ | dict[str, str]) -> str:
    host = environ.get("GRANITE_SPEECH_HOST", "0.0.0.0")
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: loopback reaches it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{environ.get('GRANITE_SPEECH_PORT', '8000')}/health"


def main(environ: os._Environ | dict[str, str] = os.environ) -> int:
    request = urllib.request.Request(health_url(environ))
    keys = [key.strip() for key in environ.get("GRANITE_SPEECH_API_KEY", "").split(",")]
    if keys[0]:
        request.add_header("Authorization", f"Bearer {keys[0]}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {health_url(environ)}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
