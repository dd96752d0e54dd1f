"""freshrec.train."""
