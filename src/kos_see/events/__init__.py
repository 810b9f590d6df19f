"""Events: how what happens to a task reaches those who watch it."""
