"""freshrec.checkpoint."""
