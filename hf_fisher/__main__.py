"""``python -m hf_fisher`` is the ``hf-fisher`` command."""

import sys

from hf_fisher.cli import main

sys.exit(main())
