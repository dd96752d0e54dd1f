"""freshrec.experiments."""
