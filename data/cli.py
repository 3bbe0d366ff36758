"""The one error boundary of every command line: a WhyRec error or an OS error is one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from data.errors import WhyRecError


def run(handlers: dict[str, Callable], args, *, on_interrupt: str = "interrupted") -> int:
    """Call the handler of `args.command`; map expected failures to one line on stderr."""
    try:
        return handlers[args.command](args)
    except WhyRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output, full disk: name the path, not a traceback
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(on_interrupt, file=sys.stderr)
        return 130
