"""CLI command modules (see freshrec.cli)."""
