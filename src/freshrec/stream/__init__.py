"""freshrec.stream."""
