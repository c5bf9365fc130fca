#!/usr/bin/env python3
"""Container health check for tcm-serve: exit 0 when GET http://127.0.0.1:$TCM_PORT<path> is 200.

Used by the image's HEALTHCHECK and by docker-compose.yml. Standard library only (the final
image has no curl or wget). The path defaults to /healthz (liveness: the process and its
workers are alive); pass /readyz to wait until every model is loaded and warmed up.

    tcm-healthcheck            # liveness
    tcm-healthcheck /readyz    # readiness
"""

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    port = os.environ.get("TCM_PORT", "8000")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("TCM_HEALTHCHECK_TIMEOUT_S", "4"))) as resp:
            ok = resp.status == 200
    except urllib.error.HTTPError as exc:  # 503 while loading or shutting down
        print(f"{url}: HTTP {exc.code}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # refused, timed out, bad port
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
