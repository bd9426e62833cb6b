"""polydiff.domains.audio."""
