"""freshrec.serve."""
