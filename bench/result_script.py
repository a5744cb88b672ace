"""The two modes of a benchmark script that writes a result file: ``--out FILE`` measures and
writes it, ``--table FILE`` prints the markdown table of one already written."""

from __future__ import annotations


def measure_or_table(parser, measure, table) -> None:
    """Parses the command line of ``parser`` (which has its own options and ``--table``) with
    ``--out`` added, and runs ``measure(args)`` or ``table(args.table)``."""
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args()
    if args.table:
        table(args.table)
    elif args.out:
        measure(args)
    else:
        parser.error("give --out or --table")
