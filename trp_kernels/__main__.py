"""``python -m trp_kernels train ...``: see trp_kernels.cli."""

from .cli import main

raise SystemExit(main())
