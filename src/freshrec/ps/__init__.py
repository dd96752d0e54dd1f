"""freshrec.ps."""
