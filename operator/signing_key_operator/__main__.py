"""`python -m signing_key_operator`: the `signing-key-operator` command (cli/main.py)."""

import sys

from .cli.main import main

sys.exit(main())
