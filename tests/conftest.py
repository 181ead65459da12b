"""Suite-wide: servers started by the tests (in process or as `cnnserve serve` children)
take any free port for the KServe v2 REST front end instead of the default 8000, so two
servers of one test (nginx's replicas) never collide; HTTP tests ask for it explicitly."""

from __future__ import annotations

import os

os.environ.setdefault("CNNSERVE_HTTP_PORT", "0")
