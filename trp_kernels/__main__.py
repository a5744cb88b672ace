"""``python -m trp_kernels train ...``: see trp_kernels.cli (one module per command)."""

from .cli import main

raise SystemExit(main())
