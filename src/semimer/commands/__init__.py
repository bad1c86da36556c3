"""Sub-commands of the ``semimer`` CLI (one module each; see semimer.cli)."""
