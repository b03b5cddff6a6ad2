"""CLI sub-commands, one module per verb family; each registers itself on edgeface.cli.app."""
