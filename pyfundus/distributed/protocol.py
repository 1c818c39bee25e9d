"""What a scoring server (``pyfundus serve``) and its clients (``pyfundus watch --remote``) agree on.

``POST {SCORE_PATH}`` with a capture's bytes as the body, and nothing else: no file name, no patient data
beyond what the capture itself holds. The answer is the verdict record of those bytes as JSON (the fields of
:data:`pyfundus.verdicts.RECORD_FIELDS`; ``path`` is null and ``sha256`` is that of the bytes received), or
HTTP 413 for a body over :data:`MAX_CAPTURE_BYTES`. Its header :data:`BATCH_HEADER` says how many captures
the model scored together (what ``--max-batch-size`` and ``--batch-wait-ms`` achieve). ``GET {SCORE_PATH}``
says what scores there (model, its sha256, backend, thresholds, pyfundus version), so a client can tell
whether its fallback model is the same.
"""

from __future__ import annotations

from ..io import DEFAULT_MAX_BYTES

SCORE_PATH = "/score"
BATCH_HEADER = "X-Pyfundus-Batch-Size"
# The reader's own limit for a file: a capture the server would refuse to read is refused at the door.
MAX_CAPTURE_BYTES = DEFAULT_MAX_BYTES
