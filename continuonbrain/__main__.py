"""``python -m continuonbrain`` is the ``continuonbrain`` command."""

from continuonbrain.cli import main

raise SystemExit(main())
