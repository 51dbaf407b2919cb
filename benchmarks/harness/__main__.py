"""``python -m harness``: see :mod:`harness.run`."""

import sys

from harness.run import main

try:
    main()
except ValueError as err:  # unknown names, bad observations: a message, not a traceback
    sys.exit(f"error: {err}")
