"""The ``medheaven`` command line, one module per command group.

``root`` builds the ``medheaven`` group (keys, hospital, federation, verify, store) and registers the others:
``data`` (data preparation and baselines), ``results`` (report, export, predict), ``doctor``; ``support`` is what
every command shares; ``plugins`` loads the commands other packages declare (``demo``). Importing this package
loads none of them, so ``medheaven.cli.support`` stays cheap for ``medheaven-coordinator``.
"""

from __future__ import annotations


def main() -> None:
    """The ``medheaven`` console script."""
    from medheaven.cli.root import main as run

    run()
