"""The e2e test's pod: says who and where it is, answers /healthz, asks the API server what it
is asked to (``probe.py api``), and stops at once on SIGTERM (it is PID 1: without a handler
SIGTERM would be ignored and deletion would wait out the grace period)."""

import base64
import http.server
import json
import os
import signal
import socket
import ssl
import sys
import urllib.request
from typing import Any

ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def serve() -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    port = int(os.environ.get("PORT", "8080"))
    print(json.dumps({"event": "started", "uid": os.getuid(), "hostname": socket.gethostname(),
                      "node": os.environ.get("NODE_NAME"), "port": port}), flush=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args: object) -> None:
            pass

    http.server.HTTPServer(("", port), Handler).serve_forever()


def api() -> None:
    """Through the kubernetes Service (the env vars the kubelet sets) with the projected token:
    /version, then a SelfSubjectReview; prints the token's claims and both answers as JSON."""
    with open(f"{ACCOUNT}/token") as f:
        token = f.read().strip()
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    base = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    context = ssl.create_default_context(cafile=f"{ACCOUNT}/ca.crt")

    def call(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data,
                                         method="POST" if data else "GET")
        request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)  # the API server answers objects
            return answer

    review = call("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                  {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    print(json.dumps({"via": base, "claims": claims, "version": call("/version"),
                      "review": review}))


if __name__ == "__main__":
    {"api": api}.get(sys.argv[1] if len(sys.argv) > 1 else "", serve)()
