"""`python -m deteclap.shard`: see deteclap.shard.cli."""

from deteclap.shard.cli import main

raise SystemExit(main())
