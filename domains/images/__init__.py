"""polydiff.domains.images."""
