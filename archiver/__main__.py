"""`python -m archiver` is the `archiver` command."""

from archiver.cli import main

raise SystemExit(main())
