"""freshrec.table."""
