"""polydiff.domains."""
