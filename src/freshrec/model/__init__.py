"""freshrec.model."""
