"""polydiff.tasks."""
