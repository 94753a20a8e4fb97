"""Per-family pure losses and steps (the `Task`s the shared loop trains)."""
