"""freshrec.data."""
