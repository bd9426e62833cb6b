"""polydiff.domains.molecules."""
